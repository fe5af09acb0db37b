"""``resolver profile apple``: configuration profiles (``.mobileconfig``, an XML property list) that point an
Apple device's managed DNS settings at this resolver, over DoH or DoT, with the device's or team's client id.

An MDM installs the profile; the device then asks every question over the encrypted transport, carrying its id
in the DoH path (``/dns-query/<id>``) or the TLS server name (``<id>.<server name>``), so ``client_ids`` in
groups and exemptions select it whatever network it is on. The UUIDs are derived from the server and the id:
generating a profile again gives the same identifiers, and the MDM replaces it rather than adding a second one.
"""

from __future__ import annotations

import argparse
import csv
import plistlib
import re
import sys
import uuid
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from resolver.config.encrypted import hostname
from resolver.errors import ConfigError

PAYLOAD_TYPE: Final = "com.apple.dnsSettings.managed"
CLIENT_ID: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # a DNS label and a path segment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("platform", choices=("apple",), help="the device platform (apple: .mobileconfig)")
    server = parser.add_mutually_exclusive_group(required=True)
    server.add_argument("--doh-url", metavar="URL", help="DNS over HTTPS, e.g. https://dns.force.example/dns-query")
    server.add_argument("--dot-name", metavar="HOST", help="DNS over TLS to this host name (tls.server_name)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--client-id", metavar="ID", help="the device's or team's id (client_ids in the policy)")
    who.add_argument("--csv", metavar="FILE", help="one profile per row: id[,name] (a header row 'id' is skipped)")
    parser.add_argument("--name", metavar="NAME", help="the name the device shows (default: Managed DNS)")
    parser.add_argument("--out", metavar="DIR", help="with --csv: where to write ID.mobileconfig (default: .)")


def command(args: argparse.Namespace) -> int:
    if args.csv:
        out = Path(args.out or ".")
        out.mkdir(parents=True, exist_ok=True)
        for client_id, name in read_ids(Path(args.csv)):
            path = out / f"{client_id}.mobileconfig"
            path.write_bytes(apple(args.doh_url, args.dot_name, client_id, name or args.name))
            print(f"wrote {path}")
        return 0
    sys.stdout.buffer.write(apple(args.doh_url, args.dot_name, args.client_id, args.name))
    return 0


def read_ids(path: Path) -> list[tuple[str, str | None]]:
    """(id, name or None) per row of a CSV file; an error names the file and line."""
    rows: list[tuple[str, str | None]] = []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                cells = [cell.strip() for cell in row]
                if not cells or not cells[0] or cells[0].startswith("#") or (number == 1 and cells[0].lower() == "id"):
                    continue
                client_id = check_id(cells[0], f"{path}:{number}")
                if any(client_id == seen for seen, _ in rows):
                    raise ConfigError(f"{path}:{number}", f"{client_id!r} is listed twice")
                rows.append((client_id, cells[1] if len(cells) > 1 and cells[1] else None))
    except OSError as err:
        raise ConfigError(str(path), err.strerror or str(err)) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    if not rows:
        raise ConfigError(str(path), "no ids")
    return rows


def check_id(client_id: str, where: str) -> str:
    if not CLIENT_ID.match(client_id):
        raise ConfigError(where, f"{client_id!r} is not a client id: letters, digits and hyphens, at most 63, "
                                 "as a DNS label (it goes into the TLS server name or the DoH path)")
    return client_id


def apple(doh_url: str | None, dot_name: str | None, client_id: str | None, name: str | None) -> bytes:
    """The profile as XML plist bytes: a ``Configuration`` holding one ``com.apple.dnsSettings.managed``."""
    if client_id is not None:
        check_id(client_id, "--client-id")
    settings: dict[str, Any]
    if doh_url is not None:
        parts = urlsplit(doh_url)
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError("--doh-url", f"{doh_url!r} is not an https:// URL without a query")
        host = parts.hostname
        url = doh_url.rstrip("/") + (f"/{client_id}" if client_id else "")
        settings = {"DNSProtocol": "HTTPS", "ServerURL": url}
    else:
        assert dot_name is not None
        host = hostname(dot_name, "--dot-name")
        settings = {"DNSProtocol": "TLS", "ServerName": f"{client_id}.{host}" if client_id else host}
    base = ".".join(reversed(host.split("."))) + ".resolver" + (f".{client_id}" if client_id else "")
    display = name or "Managed DNS" + (f" ({client_id})" if client_id else "")
    payload = {
        "PayloadType": PAYLOAD_TYPE,
        "PayloadIdentifier": f"{base}.dnssettings",
        "PayloadUUID": _uuid(base, "dnssettings", settings),
        "PayloadVersion": 1,
        "PayloadDisplayName": display,
        "DNSSettings": settings,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadIdentifier": base,
        "PayloadUUID": _uuid(base, "profile", settings),
        "PayloadVersion": 1,
        "PayloadDisplayName": display,
        "PayloadDescription": "Sends this device's DNS questions to the force's filtering resolver, encrypted.",
        "PayloadContent": [payload],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def _uuid(base: str, part: str, settings: dict[str, Any]) -> str:
    """Stable: the same server and id give the same UUID, so a regenerated profile replaces the installed one."""
    key = f"{base}/{part}/{settings.get('ServerURL') or settings.get('ServerName')}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key)).upper()
