"""Where a host is: the one loopback test the client, the server and the reasoner's HTTP adapter share.

Standard library only: the Slicer-side client imports it.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
