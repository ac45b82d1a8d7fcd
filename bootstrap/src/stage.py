# Spindle bootstrap, Python stage. Sent on stdin as one line and run by the
# fixed command line `PYTHON -c 'import sys;exec(sys.stdin.buffer.readline())'`.
# 1. announce the architecture and whether lzma is available;
# 2. read a length line, then exactly that many bytes: the agent,
#    xz-compressed when lzma is available, unless the line ends in "raw" (an
#    agent starting a child agent hands over its own binary as it runs);
# 3. put it in an anonymous memory file and exec it, keeping stdin/stdout.
# Nothing touches the disk. Reads never go past the agent: stdin stays the
# agent's message channel.
import os, sys

def read_exactly(n):
    parts = []
    while n:
        b = os.read(0, min(n, 1 << 20))
        if not b:
            sys.stderr.write("spindle: stdin closed during bootstrap\n")
            sys.exit(1)
        parts.append(b)
        n -= len(b)
    return b"".join(parts)

try:
    import lzma
    codec = "xz"
except ImportError:
    codec = "raw"
arch = os.uname()[4]
os.write(1, ("\nSPINDLE-BOOT1 %s %s\n" % (arch, codec)).encode())
line = b""
while not line.endswith(b"\n"):
    line += read_exactly(1)
words = line.split()
blob = read_exactly(int(words[0]))
if codec == "xz" and words[1:] != [b"raw"]:
    blob = lzma.decompress(blob)
name = "spindle-agent"
# No MFD_CLOEXEC: qemu-user cannot exec a close-on-exec memfd. The agent
# closes the descriptor itself.
if hasattr(os, "memfd_create"):
    fd = os.memfd_create(name, 0)
else:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 319, "aarch64": 279}[arch]
    fd = libc.syscall(nr, name.encode(), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "memfd_create")
view = memoryview(blob)
while view:
    view = view[os.write(fd, view):]
del blob, view
os.execve(fd, [name], os.environ)
