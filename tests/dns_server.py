"""A tiny real DNS server over UDP on 127.0.0.1 for the image fetcher's tests: it answers what the test
chooses (per name, per query number), late or never, and records every question it was asked."""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset

# name -> addresses, or a function of the query number (1, 2, ...) of that name and type -> addresses
Answers = dict[str, list[str] | Callable[[int], list[str]]]


class DnsServer:
    def __init__(self, answers: Answers, delay_s: float = 0.0, silent: bool = False, drop: tuple[str, ...] = (),
                 ttl: int = 0):
        """``silent``: never answers; ``drop``: never answers queries of these types ("AAAA"); ``ttl``: the
        answers' time to live in seconds (0: not to be kept)."""
        self.answers, self.delay_s, self.silent, self.drop, self.ttl = answers, delay_s, silent, drop, ttl
        self.queries: list[tuple[str, str]] = []  # (name, "A" | "AAAA"), in arrival order
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    def resolver(self) -> dns.resolver.Resolver:
        """A resolver that asks this server only (no /etc/resolv.conf, no search list)."""
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.timeout = 0.5  # per try; the caller's lifetime bounds the whole lookup
        return r

    def asked(self, name: str) -> list[str]:
        return [t for n, t in self.queries if n == name]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            query = dns.message.from_wire(data)
            question = query.question[0]
            name, rdtype = question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            if self.silent or rdtype in self.drop:
                continue
            response = dns.message.make_response(query)
            chosen = self.answers.get(name)
            if chosen is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                if callable(chosen):
                    chosen = chosen(self.queries.count((name, rdtype)))
                wanted = [a for a in chosen if (":" in a) == (rdtype == "AAAA")]
                if wanted:
                    response.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", rdtype, *wanted))
            if self.delay_s:
                time.sleep(self.delay_s)
            try:
                self._sock.sendto(response.to_wire(), peer)
            except OSError:
                pass
