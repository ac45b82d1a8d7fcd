# Spindle bootstrap, Python stage. Sent on stdin as one line and run by the
# fixed command line `PYTHON -c 'import sys;exec(sys.stdin.buffer.readline())'`.
# `ahead` is set in front of this code on that line: None, or (length,
# architecture) of an xz-compressed agent the controller sent right behind
# the line, before hearing from the stage.
# 1. announce the architecture, whether lzma is available and whether it
#    takes the agent sent ahead (same architecture, lzma available);
# 2. take that agent, or read past it;
# 3. otherwise read a length line, then exactly that many bytes: the agent,
#    xz-compressed when lzma is available, unless the line ends in "raw" (an
#    agent starting a child agent hands over its own binary as it runs);
# 4. put it in an anonymous memory file and exec it, keeping stdin/stdout.
# Nothing touches the disk. Every read goes through the buffered reader the
# command line read its line with (it may hold the start of what follows);
# nothing is in the pipe past the agent that runs, so no byte meant for the
# agent is left behind in that buffer.
import os, sys

def closed():
    sys.stderr.write("spindle: stdin closed during bootstrap\n")
    sys.exit(1)

def read_exactly(n):
    b = sys.stdin.buffer.read(n)
    if len(b) != n:
        closed()
    return b

try:
    import lzma
    codec = "xz"
except ImportError:
    codec = "raw"
# arm64 is aarch64 by another name, as the controller reads it.
arch = {"arm64": "aarch64"}.get(os.uname()[4], os.uname()[4])
take = bool(ahead) and codec == "xz" and ahead[1] == arch
os.write(1, ("\nSPINDLE-BOOT1 %s %s%s\n" % (arch, codec, " ahead" if take else "")).encode())
blob = None
if ahead:
    blob = read_exactly(ahead[0])
    blob = lzma.decompress(blob) if take else None
if blob is None:
    line = sys.stdin.buffer.readline()
    if not line.endswith(b"\n"):
        closed()
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
