"""One rule for a client id, wherever it comes from: the DoH path (``dohmsg.route``) or the TLS server name
(``tlsconf.client_id_of``). A path whose id breaks it is refused (404, as any path we do not serve); a server
name whose first label breaks it carries no id."""

from __future__ import annotations

import base64

import dns.message
import pytest

from resolver.net.dohmsg import HttpError, dns_request, is_client_id
from resolver.net.tlsconf import client_id_of

QUERY = dns.message.make_query("www.example.test", "A", id=0).to_wire()
B64 = base64.urlsafe_b64encode(QUERY).decode().rstrip("=")


@pytest.mark.parametrize("text", ["comms-01\n", "comms-01%0A", "comms 01", "comms-01\r", "\ncomms-01", "x" * 64,
                                  "-x", "a\u00e9", "a/b", ""])
def test_what_is_not_a_client_id(text: str) -> None:
    assert not is_client_id(text)


@pytest.mark.parametrize("path", ["/dns-query/comms-01%0A", "/dns-query/comms-01%0a", "/dns-query/comms-01%0D%0A",
                                  "/dns-query/comms%2001", "/dns-query/comms-01%00", "/dns-query/%E2%80%AEcomms"])
def test_a_path_whose_id_breaks_the_rule_is_refused(path: str) -> None:
    result = dns_request("GET", f"{path}?dns={B64}", None, b"")
    assert isinstance(result, HttpError) and result.status == 404, result


@pytest.mark.parametrize("label", ['"}\n{', "comms-01\n", "a b", "\x1b["])
def test_a_server_name_whose_label_breaks_the_rule_carries_no_id(label: str) -> None:
    assert client_id_of(f"{label}.dns.force.example", "dns.force.example") is None
    assert client_id_of("comms-01.dns.force.example", "dns.force.example") == "comms-01"
