"""Zero the payload of every cubin/PTX in a shared library's CUDA fat binaries except one
architecture's (e.g. 90 for H100/H200), keeping the entry headers: the file compresses to
a fraction and the CUDA runtime still finds the kept entry. Only for carrying a build to a
machine of that one architecture."""
import struct
import sys

MAGIC = struct.pack("<I", 0xBA55ED50)  # fatbin header


def keep_arch(path: str, arch: int) -> tuple[int, int]:
    data = bytearray(open(path, "rb").read())
    kept = zeroed = 0
    i = data.find(MAGIC)
    while i >= 0:
        _, header, size = struct.unpack_from("<HHQ", data, i + 4)
        p, end = i + header, i + header + size
        while p < end:  # entries: kind, version, header size, payload size, ..., sm arch
            _, _, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            sm = struct.unpack_from("<I", data, p + 28)[0]
            if sm == arch:
                kept += 1
            else:
                data[p + entry_header:p + entry_header + payload] = bytes(payload)
                zeroed += payload
            p += entry_header + payload
        i = data.find(MAGIC, end)
    if not kept:
        sys.exit(f"{path}: no sm_{arch} code to keep")
    open(path, "wb").write(data)
    return kept, zeroed


if __name__ == "__main__":
    for lib in sys.argv[2:]:
        kept, zeroed = keep_arch(lib, int(sys.argv[1]))
        print(f"{lib}: kept {kept} sm_{sys.argv[1]} entries, zeroed {zeroed / 1e6:.0f} MB")
