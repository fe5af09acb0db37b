/* The loopback ceiling: answer every UDP query with a canned reply, doing as little as a DNS server can.
 *
 * It copies the header and question of the query, sets QR and RA, drops anything after the question (an OPT
 * record), and appends one A record (compression pointer to the question name, TTL 3600, 192.0.2.1). No
 * policy, no cache, no parsing beyond finding the end of the question. Built by tests/load/bench.py with gcc.
 *
 * usage: canned ADDR PORT     (the benchmark passes 127.0.0.1 and a free port)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop = 0;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDR PORT\n", argv[0]);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: recvfrom returns EINTR and the loop ends */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("bind");
        return 1;
    }
    fprintf(stderr, "canned ready: %s:%s\n", argv[1], argv[2]);

    static const unsigned char answer[] = {
        0xc0, 0x0c,             /* name: pointer to the question */
        0x00, 0x01, 0x00, 0x01, /* type A, class IN */
        0x00, 0x00, 0x0e, 0x10, /* TTL 3600 */
        0x00, 0x04, 192, 0, 2, 1,
    };
    unsigned char buf[4096];
    while (!stop) {
        struct sockaddr_in peer;
        socklen_t peer_len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf - sizeof answer, 0, (struct sockaddr *)&peer, &peer_len);
        if (n < 0) {
            continue; /* EINTR on a signal (then stop is set), or a transient error */
        }
        if (n < 12 || (buf[2] & 0x80) || buf[4] != 0 || buf[5] != 1) {
            continue; /* not a one-question query: drop it */
        }
        ssize_t pos = 12;
        while (pos < n && buf[pos] != 0 && buf[pos] < 64) {
            pos += 1 + buf[pos];
        }
        if (pos >= n || buf[pos] != 0 || pos + 5 > n) {
            continue;
        }
        pos += 5; /* the root label, QTYPE, QCLASS */
        buf[2] |= 0x80;           /* QR */
        buf[3] = 0x80;            /* RA, RCODE 0 */
        buf[6] = 0, buf[7] = 1;   /* ANCOUNT 1 */
        buf[8] = buf[9] = 0;      /* NSCOUNT */
        buf[10] = buf[11] = 0;    /* ARCOUNT: the OPT record, if any, is dropped */
        memcpy(buf + pos, answer, sizeof answer);
        sendto(fd, buf, (size_t)pos + sizeof answer, 0, (struct sockaddr *)&peer, peer_len);
    }
    close(fd);
    return 0;
}
