#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora fuzz/corpus/<target>/seed-* (kept in git; libFuzzer's own finds are not).

Run from anywhere: python3 fuzz/gen_seeds.py. Only the standard library is used. The encap_decap
seeds follow the input layout documented at the top of fuzz_targets/encap_decap.rs, the
checksum_incremental ones that of fuzz_targets/checksum_incremental.rs.
"""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

MAC_A = bytes([0x02, 0, 0, 0, 0, 0x01])
MAC_B = bytes([0x02, 0, 0, 0, 0, 0x02])
V4_A, V4_B = bytes([1, 2, 3, 4]), bytes([20, 50, 60, 10])
V6_A = bytes.fromhex("20010db8000000000000000000000001")
V6_B = bytes.fromhex("20010db8000000000000000000000002")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(ethertype: int, payload: bytes, vlans=(), tpids=None) -> bytes:
    head = MAC_B + MAC_A
    tpids = tpids or [0x8100] * len(vlans)
    types = list(tpids) + [ethertype]
    out = head + struct.pack("!H", types[0])
    for i, vid in enumerate(vlans):
        out += struct.pack("!HH", vid, types[i + 1])
    return out + payload


def ipv4(proto: int, payload: bytes, src=V4_A, dst=V4_B, flags_frag=0x4000, ident=0x1234, options=b"", total=None) -> bytes:
    ihl = 5 + len(options) // 4
    total = total if total is not None else 4 * ihl + len(payload)
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags_frag, 64, proto, 0, src, dst) + options
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def ipv6(next_header: int, payload: bytes, src=V6_A, dst=V6_B, payload_len=None) -> bytes:
    plen = len(payload) if payload_len is None else payload_len
    return struct.pack("!IHBB16s16s", 6 << 28, plen, next_header, 64, src, dst) + payload


def tcp(sport=50000, dport=80, flags=0x02, options=b"", data=b"") -> bytes:
    off = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, off << 4, flags, 0xFFFF, 0, 0) + options + data


def udp(sport=53000, dport=53, data=b"", length=None) -> bytes:
    return struct.pack("!HHHH", sport, dport, length if length is not None else 8 + len(data), 0) + data


def icmp(ty: int, code: int, rest: bytes, body: bytes) -> bytes:
    m = struct.pack("!BBH", ty, code, 0) + rest + body
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def vxlan_v4(inner: bytes, vni=0x1234, sport=0xFEEF) -> bytes:
    vx = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
    return eth(0x0800, ipv4(17, udp(sport, 4789, vx + inner), src=bytes([172, 16, 5, 10]), dst=bytes([172, 16, 10, 20])))


def vxlan_v6(inner: bytes, vni=7, sport=0xC001) -> bytes:
    vx = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
    return eth(0x86DD, ipv6(17, udp(sport, 4789, vx + inner)))


def parse_frame_seeds():
    syn_opts = bytes.fromhex("020405b40402080a009c8a3e0000000001030307")
    dns = bytes.fromhex("1234010000010000000000000765786d706c6503636f6d0000010001")
    tcp_syn = eth(0x0800, ipv4(6, tcp(options=syn_opts)))
    udp6 = ipv6(17, udp(data=dns))
    frag_first_udp = ipv4(17, udp(length=1400, data=dns), flags_frag=0x2000)
    ext_chain = (
        bytes([60, 0, 1, 4, 0, 0, 0, 0])  # Hop-by-Hop (PadN) -> Destination Options
        + bytes([44, 0, 1, 4, 0, 0, 0, 0])  # Destination Options -> Fragment
        + bytes([17, 0, 0x00, 0x01, 0xDE, 0xAD, 0xBE, 0xEF])  # Fragment (first, M) -> UDP
        + udp(data=b"hello", length=1000)
    )
    routing_ah = (
        bytes([51, 0, 0, 0, 0, 0, 0, 0])  # Routing (type 0, 0 segments left) -> AH
        + bytes([6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1])  # AH (len 1 = 12 bytes) -> TCP
        + tcp(flags=0x12)
    )
    def dest_opts_chain(count, last):  # Hop-by-Hop, then Destination Options headers, then `last`
        out = b""
        for i in range(count):
            out += bytes([60 if i + 1 < count else last, 0, 1, 4, 0, 0, 0, 0])
        return out

    quoted_syn = ipv4(6, tcp(), src=V4_A, dst=V4_B)[:28]  # IP header + 8 bytes of TCP
    quoted_udp6 = udp6[:48]
    return {
        "ipv4-tcp-syn": tcp_syn,
        "vlan-ipv4-udp-dns": eth(0x0800, ipv4(17, udp(data=dns)), vlans=[10]) + b"\0" * 6,
        "qinq-ipv6-tcp": eth(0x86DD, ipv6(6, tcp(flags=0x18, data=b"GET / HTTP/1.1\r\n\r\n")), vlans=[100, 200], tpids=[0x88A8, 0x8100]),
        "qinq-legacy-ipv4-tcp": eth(0x0800, ipv4(6, tcp()), vlans=[5, 6], tpids=[0x9100, 0x8100]),
        "ipv6-udp-dns": eth(0x86DD, udp6),
        "ipv4-options-tcp": eth(0x0800, ipv4(6, tcp(), options=bytes([1, 1, 1, 0]))),
        "ipv4-frag-first-udp": eth(0x0800, frag_first_udp),
        "ipv4-frag-later": eth(0x0800, ipv4(17, b"middle of a datagram", flags_frag=0x2000 | 185)),
        "ipv6-ext-frag-first-udp": eth(0x86DD, ipv6(0, ext_chain)),
        "ipv6-frag-later": eth(0x86DD, ipv6(44, bytes([6, 0, 0x03, 0x20, 0, 0, 0, 9]) + b"later fragment data")),
        "ipv6-routing-ah-tcp": eth(0x86DD, ipv6(43, routing_ah)),
        "ipv6-8-ext-headers-tcp": eth(0x86DD, ipv6(0, dest_opts_chain(8, 6) + tcp())),
        "ipv6-9-ext-headers": eth(0x86DD, ipv6(0, dest_opts_chain(9, 6) + tcp())),
        "icmp4-frag-needed": eth(0x0800, ipv4(1, icmp(3, 4, bytes([0, 0, 0x05, 0x78]), quoted_syn), src=bytes([10, 0, 0, 1]), dst=V4_A)),
        "icmp4-echo": eth(0x0800, ipv4(1, icmp(8, 0, bytes([0x12, 0x34, 0, 1]), b"abcdefgh"))),
        "icmp6-packet-too-big": eth(0x86DD, ipv6(58, icmp(2, 0, struct.pack("!I", 1280), quoted_udp6))),
        "icmp6-echo": eth(0x86DD, ipv6(58, icmp(128, 0, bytes([0xBE, 0xEF, 0, 7]), b"ping"))),
        "vxlan4-ipv4-tcp": vxlan_v4(tcp_syn),
        "vxlan6-vlan-ipv6-udp": vxlan_v6(eth(0x86DD, udp6, vlans=[42])),
        "vxlan4-in-vxlan4": vxlan_v4(vxlan_v4(tcp_syn, vni=99), vni=0xFFFFFF),
    }


def encap_seed(flags, vni, ttl, mtu, headroom, hash_, src, dst, slack, inner):
    src = src.ljust(16, b"\0")
    dst = dst.ljust(16, b"\0")
    head = struct.pack("!BIBHBI6s6s16s16sB", flags, vni, ttl, mtu, headroom, hash_, MAC_A, MAC_B, src, dst, slack)
    assert len(head) == 58
    return head + inner


def encap_decap_seeds():
    inner = parse_frame_seeds()["ipv4-tcp-syn"]
    a4, b4 = bytes([172, 16, 5, 10]), bytes([172, 16, 10, 20])
    a6, b6 = bytes.fromhex("fd000000000000000000000000000001"), bytes.fromhex("fd000000000000000000000000000002")
    return {
        "v4-ok": encap_seed(0x00, 0x1234, 64, 1500, 50, 0xDEADBEEF, a4, b4, 0, inner),
        "v4-headroom-128-slack": encap_seed(0x10, 0x00ABCD, 1, 9000, 128, 1, a4, b4, 6, inner),
        "v6-csum": encap_seed(0x01, 7, 64, 1500, 70, 0x12345678, a6, b6, 0, inner),
        "v6-zero-csum": encap_seed(0x03, 0xFFFFFF, 255, 1500, 100, 0, a6, b6, 4, inner),
        "v4-short-inner": encap_seed(0x00, 1, 64, 1500, 50, 2, a4, b4, 0, b"\x01\x02\x03"),
        "v4-headroom-too-small": encap_seed(0x00, 1, 64, 1500, 49, 3, a4, b4, 0, inner),
        "v6-headroom-too-small": encap_seed(0x01, 1, 64, 1500, 60, 3, a6, b6, 0, inner),
        "v4-mtu-exceeded": encap_seed(0x00, 1, 64, 60, 50, 4, a4, b4, 0, inner),
        "vni-overflow": encap_seed(0x08, 0x01000000, 64, 1500, 50, 5, a4, b4, 0, inner),
        "mixed-versions": encap_seed(0x04, 1, 64, 1500, 70, 6, a4, b6, 0, inner),
        "len-past-buffer": encap_seed(0x20, 1, 64, 1500, 50, 7, a4, b4, 3, inner),
    }


def checksum_seeds():
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    syn = parse_frame_seeds()["ipv4-tcp-syn"][34:]
    return {
        "ipv4-dst-rewrite": bytes([2, 8, 5]) + bytes([10, 0, 1, 4]) + b"\0" * 12 + hdr,
        "ipv4-port16": bytes([0, 1, 5]) + bytes([0xFF, 0xFF]) + b"\0" * 14 + hdr,
        "ipv6-addr-rewrite": bytes([3, 4, 3]) + V6_B + parse_frame_seeds()["ipv6-udp-dns"][14:],
        "tcp-port": bytes([1, 1, 8]) + bytes([0x1F, 0x90]) + b"\0" * 14 + syn,
        "all-ones": bytes([2, 0, 1]) + b"\xff" * 16 + b"\xff" * 32,
    }


def main():
    for target, seeds in (
        ("parse_frame", parse_frame_seeds()),
        ("encap_decap", encap_decap_seeds()),
        ("checksum_incremental", checksum_seeds()),
    ):
        d = os.path.join(ROOT, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, f"seed-{name}"), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
