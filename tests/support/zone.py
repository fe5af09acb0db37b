"""The test upstream's zone: the names the integration tests expect to be forwarded, and their records."""

from __future__ import annotations

from tests.support.authserver import AuthServer

WWW = "www.example.test"
WWW_V4 = "192.0.2.10"
WWW_V6 = "2001:db8::10"
MAIL = "mail.example.test"
MAIL_MX = "10 mx.example.test."
MX_V4 = "192.0.2.25"
TXT_NAME = "txt.example.test"
TXT_VALUE = "hello from the test upstream"
ALIAS = "alias.example.test"
MISSING = "missing.example.test"  # not in the zone: NXDOMAIN
BIG = "big.example.test"
BIG_TXT = [f"record-{i:02d}-" + "x" * 100 for i in range(30)]  # ~3.5 KB: over 1232 bytes, needs TCP
NOTTIKTOK = "nottiktok.com"
NOTTIKTOK_V4 = "192.0.2.30"
HELP_TIKTOK = "help.tiktok.com"
HELP_TIKTOK_V4 = "192.0.2.31"
DEEP_HELP_TIKTOK = "a.help.tiktok.com"
DEEP_HELP_TIKTOK_V4 = "192.0.2.32"
WHATSAPP = "whatsapp.com"
WHATSAPP_V4 = "192.0.2.40"
FACEBOOK = "facebook.com"
FACEBOOK_V4 = "192.0.2.41"
TIKTOK_V4 = "192.0.2.50"  # what the upstream would say for www.tiktok.com if it were ever asked


def populate(auth: AuthServer) -> AuthServer:
    auth.add(WWW, "A", WWW_V4)
    auth.add(WWW, "AAAA", WWW_V6)
    auth.add(MAIL, "MX", MAIL_MX)
    auth.add("mx.example.test", "A", MX_V4)
    auth.add(TXT_NAME, "TXT", TXT_VALUE)
    auth.add(ALIAS, "CNAME", f"{WWW}.")
    for text in BIG_TXT:
        auth.add(BIG, "TXT", text)
    auth.add(NOTTIKTOK, "A", NOTTIKTOK_V4)
    auth.add(HELP_TIKTOK, "A", HELP_TIKTOK_V4)
    auth.add(DEEP_HELP_TIKTOK, "A", DEEP_HELP_TIKTOK_V4)
    auth.add(WHATSAPP, "A", WHATSAPP_V4)
    auth.add(FACEBOOK, "A", FACEBOOK_V4)
    for name in ("tiktok.com", "www.tiktok.com"):
        auth.add(name, "A", TIKTOK_V4)
    return auth
