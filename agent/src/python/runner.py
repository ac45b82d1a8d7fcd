# Spindle's Python runner: a warm "zygote" interpreter the agent keeps per
# (account, Python path). Standard library only: targets have nothing else.
#
# Theory of operation:
# 1. The agent starts `python -c 'import sys;exec(sys.stdin.read())'`, writes
#    this file on its stdin and closes it. Fd 3 is a SOCK_SEQPACKET socket to
#    the agent; every message is one packet, with descriptors passed
#    alongside (SCM_RIGHTS): JSON from the agent, and to it one line of
#    fields, `op id pid code signal wall_us cpu_us message` (`send`).
# 2. {"op": "code", "hash": H} + [memfd]: a module bundle (the AnsiballZ zip)
#    kept in the agent's memory. basic and ansible-core's internal
#    module_utils are imported here once per bundle, so forked children
#    start warm; a child evicts any it finds in another version in its own
#    bundle (`stale`).
# 3. {"op": "run", "id": N, ...} + [stdin, stdout, stderr(, params)]: fork a
#    child that runs the module as the stock AnsiballZ wrapper would, with
#    its standard streams on the given pipes (or, with "tty", on one
#    terminal that becomes its controlling terminal; arguments too large
#    for the message come in a memory file, "params_fd"); reply `started`
#    with its pid, and `exit` with its code or signal once it has ended,
#    with the time from handing it the task and its CPU. A child that
#    finishes its task closes its pipes and leaves its exit code in its
#    "box" (a shared page block, no descriptor a module could see) just
#    before it exits, and signals SIGUSR1 (`collect_done`); one that dies
#    otherwise is reaped.
# 4. Every task runs in its own forked child, so nothing a module does to its
#    interpreter (patches, globals, environment, fds, atexit) reaches the next.
# 5. The task's module is compiled here once per bundle (`compile_module`)
#    and handed to children by a zipimport subclass (`use_compiled`).
# 6. Between tasks the zygote forks a spare child that gets ready for a task
#    (`prepare`) and waits for one, so a task does not wait for the fork. A
#    spare is only used while the zygote's state it copied is current
#    (`GEN`); otherwise it is let go and the task's child is forked then.
# 7. A child copies each page of the zygote's memory it writes to (reference
#    counts make that most pages a module touches). A few children per
#    module note which pages they copied (`written_pages`), and a spare
#    copies those ahead of its task (`pretouch`).
# The zygote stays single-threaded so that forking it is safe.
import array, errno, gc, json, mmap, os, re, resource, select, signal, shutil, socket, sys, time

SOCK = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, 3)
# Started with -c: the working directory leads the search path. A module's
# imports must not find what lies there (the stock wrapper drops it too).
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
MAX_PACKET = 1 << 20
codes = {}  # hash -> (zip path readable by us and our children, memfd)
children = {}  # pid -> [request id, task temp dir or None, clock() at dispatch, module, box, learns(, reported)]
TMP = {}  # remote_tmp -> this interpreter's private temp dir under it
TMPDIR_NULL = re.compile(r'"_ansible_tmpdir"\s*:\s*null')
REMOTE_TMP = re.compile(r'"_ansible_remote_tmp"\s*:\s*("(?:[^"\\]|\\.)*")')
KEEP = re.compile(r'"_ansible_keep_remote_files"\s*:\s*true')


def recv():
    fds = array.array("i")
    msg, anc, _, _ = SOCK.recvmsg(MAX_PACKET, socket.CMSG_SPACE(16 * fds.itemsize))
    if not msg:
        return None, []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return json.loads(msg.decode("utf-8")), list(fds)


def send(op, rid=0, pid=0, code=None, signum=None, wall_us=0, cpu_us=0, message=""):
    # One line of fields for the agent, the free text last:
    # op id pid code signal wall_us cpu_us message ("-" for no code/signal).
    opt = lambda n: "-" if n is None else "%d" % n
    line = "%s %d %d %s %s %d %d %s" % (op, rid, pid, opt(code), opt(signum), wall_us, cpu_us, message)
    try:
        # A path's undecodable bytes as they were.
        data = line.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = line.encode("utf-8", "replace")
    SOCK.sendall(data)


def ansible_packages():
    # Walks every module (which, in a child, would copy the pages of each
    # one it touches): children use the list kept in PACKAGES.
    for name, mod in list(sys.modules.items()):
        if name == "ansible" or name.startswith(("ansible.", "ansible_collections")):
            if getattr(mod, "__path__", None) is not None:
                yield name, mod


def warm(path):
    # Import, once per bundle, what forked children would otherwise import
    # per task: basic, the loader, and ansible-core's own internals
    # (module_utils/_internal: no availability flags, nothing a role or
    # collection ships). Anything a bundle carries in another version is
    # evicted again in that bundle's children (`stale`).
    wanted = ["ansible.module_utils.basic", "ansible.module_utils._internal._ansiballz._loader"]
    for name in crcs(path):
        if name.startswith("ansible/module_utils/_internal/") and name.endswith(".py"):
            mod = name[:-3].replace("/", ".")
            if mod.endswith(".__init__"):
                mod = mod[: -len(".__init__")]
            if mod not in sys.modules:
                wanted.append(mod)
    sys.path.insert(0, path)
    added = []
    for name, mod in ansible_packages():
        entry = path + "/" + name.replace(".", "/")
        if entry not in mod.__path__:
            mod.__path__.insert(0, entry)
            added.append((mod, entry))
    sys.path_importer_cache.clear()
    for name in wanted:
        try:
            __import__(name)
        except BaseException:
            pass
    # Packages imported here keep this bundle on their path (as the first
    # bundle's always did); those imported earlier are as they were.
    for mod, entry in added:
        if entry in mod.__path__:
            mod.__path__.remove(entry)
    sys.path.remove(path)
    sys.path_importer_cache.clear()
    # Warnings raised while importing belong to no task.
    warnings = sys.modules.get("ansible.module_utils.common.warnings")
    for registry in ("_global_warnings", "_global_deprecations"):
        getattr(warnings, registry, {}).clear()
    quiet_empty_selects()
    note_warm()


def quiet_empty_selects():
    # run_command reads its command's output through a selector until both
    # pipes are closed and the command has ended. When the command ends
    # between its two checks of that, it selects once more on a selector
    # that holds nothing, which sleeps a whole second (its timeout) and
    # then finds the command ended. basic's selectors here return at once
    # the first time they are asked to select with nothing registered (a
    # loop that keeps asking still sleeps as it would); everything else is
    # the standard module's, and the standard module itself is untouched.
    basic = sys.modules.get("ansible.module_utils.basic")
    real = getattr(basic, "selectors", None)
    if real is None or getattr(real, "QUIET_WHEN_EMPTY", False):
        return
    import types

    quiet = types.ModuleType(real.__name__, real.__doc__)
    quiet.__dict__.update((k, v) for k, v in real.__dict__.items() if k not in ("__name__", "__doc__"))
    quiet.QUIET_WHEN_EMPTY = True

    def quieter(base):
        def select(self, timeout=None):
            if not self.get_map() and not getattr(self, "_spindle_quick", False):
                self._spindle_quick = True
                return []
            return base.select(self, timeout)

        return type(base.__name__, (base,), {"select": select, "__module__": base.__module__})

    for name in ("PollSelector", "SelectSelector"):
        if hasattr(real, name):
            setattr(quiet, name, quieter(getattr(real, name)))
    basic.selectors = quiet


def vfork_idle_preexec():
    # run_command hands subprocess a preexec_fn that only sets the umask it
    # was given, and does nothing without one. Its mere presence makes
    # subprocess fork the module's whole interpreter (copying its page
    # tables, then each page either side writes until the command
    # executes) where Python 3.10 on would vfork: milliseconds per command.
    # The function subprocess starts commands with is wrapped to leave such
    # an idle preexec_fn out: subprocess has already chosen it over
    # posix_spawn (which a preexec_fn rules out), and what the command
    # starts with is the same either way. A task that registered fork hooks
    # keeps it (they run only around a fork).
    if sys.version_info < (3, 10):
        return
    import functools, posix, subprocess, _posixsubprocess

    # Bound to a name of subprocess's own from Python 3.11 on.
    owner, name = (subprocess, "_fork_exec") if getattr(subprocess, "_fork_exec", None) else (_posixsubprocess, "fork_exec")
    base = getattr(owner, name)
    if getattr(base, "SPINDLE_VFORK", False):
        return
    space = {}
    exec("import os\ndef run_command(umask):\n def preexec():\n  if umask:\n   os.umask(umask)\n return preexec\n", space)
    IDLE_PREEXEC.append(space["run_command"](None).__code__)

    def fork_exec(*args):
        if not AT_FORK:
            idle = [i for i, arg in enumerate(args) if callable(arg) and idle_preexec(arg)]
            if idle:
                fork_exec.dropped += 1
                args = tuple(None if i in idle else arg for i, arg in enumerate(args))
        return base(*args)

    functools.update_wrapper(fork_exec, base)
    fork_exec.SPINDLE_VFORK = True
    fork_exec.dropped = 0  # starts it left the preexec_fn out of (for tests)
    setattr(owner, name, fork_exec)

    register = posix.register_at_fork

    def register_at_fork(*args, **kwargs):
        AT_FORK.append(True)
        return register(*args, **kwargs)

    functools.update_wrapper(register_at_fork, register)
    posix.register_at_fork = os.register_at_fork = register_at_fork


AT_FORK = []  # in a child: whether its task registered fork hooks
IDLE_PREEXEC = []  # the code of basic's preexec closure, compiled alike


def idle_preexec(fn):
    # basic's `def preexec(): if umask: os.umask(umask)` (ansible-core 2.17
    # to 2.21) to the byte, with no umask in its closure.
    try:
        want, code = IDLE_PREEXEC[0], fn.__code__
        return (
            getattr(fn, "__module__", None) == "ansible.module_utils.basic"
            and fn.__qualname__.endswith("run_command.<locals>.preexec")
            and (code.co_code, code.co_consts, code.co_names, code.co_freevars, code.co_argcount)
            == (want.co_code, want.co_consts, want.co_names, want.co_freevars, want.co_argcount)
            and not fn.__closure__[0].cell_contents
        )
    except Exception:
        return False


WARM = {}  # module -> (file inside its bundle, CRC) for modules loaded from one
PACKAGES = []  # ansible_packages() as of the last warm-up
CRCS = {}  # bundle path -> {file: CRC}
STALE = {}  # bundle path -> stale(path), until WARM grows


def crcs(path):
    if path not in CRCS:
        import zipfile
        try:
            CRCS[path] = dict((i.filename, i.CRC) for i in zipfile.ZipFile(path).infolist())
        except Exception:
            CRCS[path] = {}
    return CRCS[path]


def note_warm():
    PACKAGES[:] = list(ansible_packages())
    paths = [p + "/" for p, _ in codes.values()]
    for name, mod in list(sys.modules.items()):
        origin = getattr(mod, "__file__", None) or ""
        if name in WARM or not origin:
            continue
        for p in paths:
            if origin.startswith(p):
                inner = origin[len(p):]
                WARM[name] = (inner, crcs(p[:-1]).get(inner))
                STALE.clear()
                break


def stale(path):
    # Modules the zygote holds that this bundle lacks or carries in
    # another version: its children must import them afresh (or fail to,
    # as a stock run would).
    if path not in STALE:
        mine = crcs(path)
        STALE[path] = [name for name, (inner, crc) in WARM.items() if mine.get(inner) != crc]
    return STALE[path]


# A task's module compiled once per bundle, here, rather than in every
# child: zipimport compiles a source on each import (and runpy has it
# compiled twice, once only for the file name). Keyed by (bundle, file in
# it); None where compiling failed (the child then fails as it would).
COMPILED = {}


def compile_module(path, fqn):
    inner = fqn.replace(".", "/") + ".py"
    key = (path, inner)
    if key in COMPILED or sys.version_info < (3, 8):
        return
    names = crcs(path)
    # Only a plain source module: zipimport would prefer a compiled one or
    # a package's __init__.
    package = inner[:-3] + "/__init__.py"
    if inner not in names or inner + "c" in names or package in names or package + "c" in names:
        return
    COMPILED[key] = None
    changed()
    try:
        import warnings, zipfile
        source = zipfile.ZipFile(path).read(inner)
        # What zipimport does with a source it finds.
        source = source.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        with warnings.catch_warnings(record=True) as raised:
            warnings.simplefilter("always")
            code = compile(source, path + "/" + inner, "exec", dont_inherit=True)
        # Warnings while compiling belong on the task's stderr, under its
        # own filters: then each task compiles it, as in a stock run.
        if not raised:
            COMPILED[key] = code
    except Exception:
        pass


def use_compiled():
    # In a child: zip entries on sys.path get an importer that hands out
    # what COMPILED holds and is zipimport itself for everything else.
    import zipimport

    class Importer(zipimport.zipimporter):
        def _compiled(self, fullname):
            return COMPILED.get((self.archive, self.prefix + fullname.rpartition(".")[2] + ".py"))

        def get_code(self, fullname):
            code = self._compiled(fullname)
            return code if code is not None else zipimport.zipimporter.get_code(self, fullname)

        def get_filename(self, fullname):
            code = self._compiled(fullname)
            if code is not None:
                return code.co_filename
            return zipimport.zipimporter.get_filename(self, fullname)

    sys.path_hooks[:] = [Importer if h is zipimport.zipimporter else h for h in sys.path_hooks]


def prepare():
    # In a new child, before (or as) it learns its task: leave the zygote's
    # ways behind.
    import atexit
    atexit._clear()
    # Fork hooks the zygote registered (the standard library's, while
    # warming) are not the task's.
    del AT_FORK[:]
    # Whatever the zygote holds is left out of this child's garbage
    # collections: they would walk (and so copy) all of its memory.
    if FREEZE is not None:
        FREEZE()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    SOCK.close()
    os.close(WAKE_R)
    os.close(WAKE_W)
    os.setsid()
    # The bundles stay reachable through the zygote's /proc entry; the
    # module must not see (or pass on) our descriptors.
    for _, code_fd in codes.values():
        os.close(code_fd)
    # Nor the spare's socket and box, nor other tasks' boxes.
    if SPARE is not None:
        SPARE[1].close()
        SPARE[3].close()
    for entry in children.values():
        entry[4].close()
    children.clear()
    if COMPILED:
        use_compiled()


def spare_child(sock, box):
    # Runs in a spare; never returns. Its task comes as [req, path] with the
    # task's three descriptors; the end of the stream without one means it
    # is not needed.
    global BOX, LEARNING
    BOX = box
    try:
        prepare()
        pretouch(sock)
        fds = array.array("i")
        chunk, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(3 * fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        if not chunk:
            os._exit(0)
        parts = [chunk]
        while chunk:
            chunk = sock.recv(1 << 16)
            parts.append(chunk)
        sock.close()
        req, path = json.loads(b"".join(parts).decode("utf-8"))
        LEARNING = req.get("learn", False)
    except BaseException:
        os._exit(1)
    run_child(req, path, list(fds))


def run_child(req, path, fds):
    # Runs in the task's child, prepared; never returns.
    global TASK_PID
    TASK_PID = os.getpid()
    code = 1
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        tty = bool(req.get("tty"))
        if tty:
            # One terminal on all three (a module file run through
            # `ssh -tt`): it becomes this session's controlling terminal.
            import fcntl, termios
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        import io
        out = sys.__stdout__
        enc, errs = (out.encoding, out.errors) if out else ("utf-8", "strict")
        err_errs = sys.__stderr__.errors if sys.__stderr__ else "backslashreplace"
        def stream(fd, mode, errors, lines=False):
            raw = io.FileIO(fd, mode, closefd=False)
            buf = io.BufferedWriter(raw) if "w" in mode else io.BufferedReader(raw)
            return io.TextIOWrapper(buf, encoding=enc, errors=errors, line_buffering=lines)
        # As a fresh interpreter sets them up: on pipes, stderr is line
        # buffered from Python 3.9 on; on a terminal, both are.
        sys.stdin = sys.__stdin__ = stream(0, "r", errs)
        sys.stdout = sys.__stdout__ = stream(1, "w", errs, tty)
        sys.stderr = sys.__stderr__ = stream(2, "w", err_errs, tty or sys.version_info >= (3, 9))
        for name in req.get("unset") or ():
            os.environ.pop(name, None)
        os.environ.update(req.get("env") or {})
        if req.get("cwd"):
            try:
                os.chdir(req["cwd"])
            except PermissionError:
                # One the account may not enter: stay where the zygote is,
                # as a command under sudo stays in such a directory.
                pass
        for name in req["stale"]:
            sys.modules.pop(name, None)
            parent, _, leaf = name.rpartition(".")
            if parent in sys.modules and getattr(sys.modules[parent], leaf, None) is not None:
                try:
                    delattr(sys.modules[parent], leaf)
                except AttributeError:
                    pass
        if "TZ" in (req.get("env") or {}):
            import time
            time.tzset()
        limit = req.get("rlimit_nofile") or 0
        if limit:
            import resource
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, limit), hard))
        sys.argv = [""]
        sys.path.insert(0, path)
        # Packages imported while warming keep the zygote's search path:
        # let them find this bundle's modules too.
        for name, mod in PACKAGES:
            mod.__path__.insert(0, path + "/" + name.replace(".", "/"))
        sys.path_importer_cache.clear()
        code = run_module(req, path)
    except SystemExit as e:
        code = exit_code(e.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finish(code)


def run_module(req, path):
    fqn, params = req["fqn"], req["params"].encode("utf-8")
    if req["entry"] == "loader":
        from ansible.module_utils._internal._ansiballz import _loader
        # Only wrappers that pass secrets (ansible-core 2.22) have a loader
        # that takes them.
        secrets = {} if req.get("secrets") is None else {"secrets": frozenset(req["secrets"])}
        _loader.run_module(
            json_params=params,
            profile=req["profile"],
            module_fqn=fqn,
            modlib_path=path,
            extensions=req.get("extensions") or {},
            **secrets
        )
    else:
        import runpy
        from ansible.module_utils import basic
        basic._ANSIBLE_ARGS = params
        runpy.run_module(
            mod_name=fqn,
            init_globals=dict(_module_fqn=fqn, _modlib_path=path),
            run_name="__main__",
            alter_sys=True,
        )
    print('{"msg": "New-style module did not handle its own exit", "failed": true}')
    return 1


def exit_code(value):
    # What the interpreter itself does with SystemExit at top level.
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    try:
        sys.stderr.write(str(value) + "\n")
    except Exception:
        pass
    return 1


def finish(code):
    # The interpreter's own shutdown steps, then leave without running the
    # zygote's.
    try:
        import threading
        threading._shutdown()
    except BaseException:
        pass
    try:
        import atexit
        atexit._run_exitfuncs()
    except SystemExit as e:
        code = exit_code(e.code)
    except BaseException:
        pass
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass
    # The task is over: its descriptors close now (releasing any lock held
    # through them), and the zygote learns the exit code, rather than once
    # the kernel has torn this process down. Not in a process the module
    # forked that ended up here.
    try:
        if BOX is not None and os.getpid() == TASK_PID:
            report(code)
    finally:
        os._exit(code)


def report(code):
    pages = array.array("Q")
    if LEARNING:
        try:
            pages = written_pages()[: BOX_BYTES // 8 - 4]
        except Exception:
            pass
    cpu = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        cpu += usage.ru_utime + usage.ru_stime
    for fd in os.listdir("/proc/self/fd"):
        try:
            os.close(int(fd))
        except OSError:
            pass
    fields = [code & 0xFF, int(cpu * 1e6), len(pages)]
    BOX[32 : 32 + 8 * len(pages)] = pages.tobytes()
    BOX[8:32] = array.array("q", fields).tobytes()
    # Written last and checked against the fields: a reader that sees it
    # sees them.
    BOX[0:8] = array.array("q", [seal(fields)]).tobytes()
    if os.getppid() == ZYGOTE:
        os.kill(ZYGOTE, signal.SIGUSR1)


def seal(fields):
    # Never 0 (a box nobody wrote).
    return (fields[0] * 1000003 + fields[1] * 10007 + fields[2]) % (1 << 61) + 1


# Every task's child reports through a box: shared memory of BOX_BYTES,
# [seal, exit code, CPU microseconds, pages noted] then those pages.
BOX_BYTES = 1 << 16
BOX = None  # in a child: its box
TASK_PID = None  # in a child: its pid once it runs its task
ZYGOTE = os.getpid()

# Pages of the zygote's memory that children copied, for spares to copy
# ahead of their tasks. Learnt from the first LEARN_TASKS children of each
# module (the last LEARN_MODULES modules are kept), and from every
# LEARN_EVERY-th task, through their boxes.
LEARN_TASKS = 2
LEARN_EVERY = 64
LEARN_MODULES = 6
LEARNT = {}  # module -> page addresses, oldest learnt first
LEARNS = {}  # module -> children learnt from
TASKS = [0]
LEARNING = False  # in a child: whether to note its pages
MADVISE = []  # [libc.madvise] once pages are learnt and the kernel can populate
MADV_POPULATE_WRITE = 23
PAGE = os.sysconf("SC_PAGE_SIZE")


def written_pages():
    # Pages present in our private writable mappings and no longer shared
    # (pagemap bits 63 and 56): the ones this child copied.
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            f = line.split(None, 2)
            if f[1][1] == "w" and f[1][3] == "p":
                start, end = f[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    pages = array.array("Q")
    with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        for start, end in ranges:
            pagemap.seek(start // PAGE * 8)
            entries = array.array("Q", pagemap.read((end - start) // PAGE * 8))
            pages.extend(start + i * PAGE for i, e in enumerate(entries) if e >> 56 & 0x81 == 0x81)
    return pages


def should_learn(fqn):
    # Whether this task's child should note the pages it copies.
    TASKS[0] += 1
    if LEARNS.get(fqn, 0) >= LEARN_TASKS and TASKS[0] % LEARN_EVERY:
        return False
    return can_populate()


def can_populate():
    # Whether madvise(MADV_POPULATE_WRITE) works here (Linux 5.14 on).
    if not MADVISE:
        fn = None
        try:
            import ctypes
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            probe = mmap.mmap(-1, PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            address = ctypes.addressof(ctypes.c_char.from_buffer(probe))
            if fn(address, PAGE, MADV_POPULATE_WRITE) != 0:
                fn = None
        except Exception:
            fn = None
        MADVISE.append(fn)
    return MADVISE[0] is not None


def learnt(fqn, pages):
    LEARNS[fqn] = LEARNS.get(fqn, 0) + 1
    LEARNT.pop(fqn, None)
    LEARNT[fqn] = pages
    while len(LEARNT) > LEARN_MODULES:
        del LEARNT[next(iter(LEARNT))]


def pretouch(sock):
    # In a spare: copy the learnt pages now, in runs, until its task comes.
    if not LEARNT or not MADVISE or MADVISE[0] is None:
        return
    pages = set()
    for learnt_pages in LEARNT.values():
        pages.update(learnt_pages)
    runs = []
    for page in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1][1] += PAGE
        else:
            runs.append([page, PAGE])
    madvise = MADVISE[0]
    for i, (start, length) in enumerate(runs):
        if i % 32 == 0 and select.select([sock], [], [], 0)[0]:
            return
        madvise(start, length, MADV_POPULATE_WRITE)


clock = getattr(time, "monotonic", time.time)


def reap():
    ended = False
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            break
        if pid == 0:
            break
        if pid not in children:
            if SPARE is not None and SPARE[0] == pid:
                drop_spare()
            continue
        if os.WIFSIGNALED(status):
            code, signum = None, os.WTERMSIG(status)
        else:
            code, signum = os.WEXITSTATUS(status), None
        ended |= task_ended(pid, code, signum, usage.ru_utime + usage.ru_stime)
        del children[pid]
    # Between tasks: the next one finds its child ready.
    if ended:
        fork_spare()


def collect_done():
    # Children that finished their task left it in their boxes.
    ended = False
    for pid, entry in list(children.items()):
        box = entry[4]
        if len(entry) > 6:
            continue
        fields = list(array.array("q", box[8:32]))
        if array.array("q", box[:8])[0] != seal(fields):
            continue
        code, cpu_us, count = fields
        if entry[5] and count:
            learnt(entry[3], array.array("Q", box[32 : 32 + 8 * count]))
        ended |= task_ended(pid, code, None, cpu_us / 1e6)
    if ended:
        fork_spare()


def task_ended(pid, code, signum, cpu):
    # Reports a task's end once (whether this call did).
    entry = children[pid]
    rid, tmp, started, fqn, box, learn = entry[:6]
    if len(entry) > 6:
        return False
    entry.append(True)
    if box is not None:
        box.close()
    # Gone before the task is reported, as a stock module's own directory
    # is: the next task, in any process, must not find it.
    if tmp:
        try:
            os.rmdir(tmp)  # most modules leave it empty
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    send("exit", rid, code=code, signum=signum, wall_us=int((clock() - started) * 1e6), cpu_us=int(cpu * 1e6))
    return True


def private_tmp(remote_tmp):
    # One directory per interpreter and remote_tmp, 0700, where the module
    # would make its own: under remote_tmp, or without one where tempfile
    # picks (TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp, the working
    # directory). The agent removes them with the interpreter. Whenever
    # that is not possible the module is left to do as it would in a stock
    # run (including creating a missing remote_tmp, and warning about it).
    if TMP.get(remote_tmp):
        return TMP[remote_tmp]
    import tempfile
    base = os.path.expanduser(os.path.expandvars(remote_tmp)) if remote_tmp else None
    if base is not None and not os.path.isdir(base):
        return None
    try:
        path = tempfile.mkdtemp(prefix="spindle-", dir=base)
    except OSError:
        return None
    send("tmpdir", message=path)
    TMP[remote_tmp] = path
    changed()  # tempfile is imported now
    return path


def task_tmp(req):
    # Where the module's own temporary files go, as `_ansible_tmpdir`: a
    # fresh directory per task, removed once the task is reaped. Made here,
    # before the fork, so the module finds it; a module that never asks for
    # it costs a mkdir.
    params = req["params"]
    if not TMPDIR_NULL.search(params) or KEEP.search(params):
        # Kept remote files outlive the interpreter: the module makes its
        # own directory then, as in a stock run.
        return None
    found = REMOTE_TMP.search(params)
    remote_tmp = json.loads(found.group(1)) if found else None
    base = private_tmp(remote_tmp)
    if base is None:
        return None
    path = os.path.join(base, "task-%d" % req["id"])
    try:
        os.mkdir(path, 0o700)
    except OSError:
        # Removed under us: made afresh for the next task.
        TMP.pop(remote_tmp, None)
        return None
    req["params"] = TMPDIR_NULL.sub(lambda _: '"_ansible_tmpdir": ' + json.dumps(path), params, 1)
    return path


RESOLV_CONF = "/etc/resolv.conf"


def resolv_stamp():
    try:
        st = os.stat(RESOLV_CONF)
        return (st.st_ino, st.st_size, st.st_mtime)
    except OSError:
        return None


RESOLV = resolv_stamp()


def refresh_resolver():
    # A long-lived process may keep the resolver settings it read first
    # (older C libraries never look again); a task after an edit of
    # /etc/resolv.conf must see it, as one in a new SSH session would.
    global RESOLV
    now = resolv_stamp()
    if now == RESOLV:
        return
    RESOLV = now
    changed()
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        (getattr(libc, "__res_init", None) or libc.res_init)()
    except Exception:
        pass


GEN = 0  # bumped by every change to the zygote a child would inherit
SPARE = None  # (pid, socket, GEN when forked, box) of the spare child


def changed():
    global GEN
    GEN += 1
    drop_spare()


def drop_spare():
    # A spare whose socket closes without a task ends by itself.
    global SPARE
    if SPARE is not None:
        SPARE[1].close()
        SPARE[3].close()
        SPARE = None


def fork_spare():
    global SPARE
    if SPARE is not None or not codes:
        return
    made = []
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        made += [ours, theirs]
        box = mmap.mmap(-1, BOX_BYTES)
        made.append(box)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except Exception:
        # Only a head start is lost (out of processes or memory, say).
        for thing in made:
            thing.close()
        return
    if pid == 0:
        ours.close()
        spare_child(theirs, box)
    theirs.close()
    SPARE = (pid, ours, GEN, box)


def to_spare(req, path, fds):
    # Hands the task to the spare if it is current: (its pid, its box),
    # else None.
    global SPARE
    spare, SPARE = SPARE, None
    if spare is None:
        return None
    pid, sock, gen, box = spare
    try:
        if gen == GEN:
            data = json.dumps([req, path]).encode("utf-8")
            sent = sock.sendmsg([data[:MAX_PACKET]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            sock.sendall(data[sent:])
            return pid, box
    except OSError:
        # It died: the task gets a child of its own.
        pass
    finally:
        sock.close()
    box.close()
    return None


def read_file(fd):
    # All of a file by its descriptor, whatever its offset.
    size = os.fstat(fd).st_size
    parts, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def handle(req, fds):
    global BOX, LEARNING
    op = req.get("op")
    if op == "code":
        os.set_inheritable(fds[0], False)
        path = "/proc/%d/fd/%d" % (os.getpid(), fds[0])
        codes[req["hash"]] = (path, fds[0])
        changed()
        warm(path)
    elif op == "run":
        # Arguments and secrets too large for the message: in memory files
        # of their own, after the task's three streams (the secrets' last,
        # so it is taken first).
        for key, name in (("secrets_fd", "secrets"), ("params_fd", "params")):
            if req.get(key) is not None:
                fd = fds.pop(req[key])
                try:
                    req[name] = read_file(fd).decode("utf-8")
                finally:
                    os.close(fd)
        try:
            # The wrapper's extensions and secrets, as JSON text.
            req["extensions"] = json.loads(req.get("extensions") or "{}")
            if req.get("secrets") is not None:
                secrets = json.loads(req["secrets"])
                if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
                    raise ValueError("not a list of strings")
                req["secrets"] = secrets
        except (TypeError, ValueError) as e:
            for fd in fds:
                os.close(fd)
            send("error", req["id"], message="the module's extensions or secrets are not JSON: %s" % e)
            return
        path = codes.get(req["hash"], (None, None))[0]
        if path is None:
            for fd in fds:
                os.close(fd)
            send("error", req["id"], message="code %s not loaded" % req["hash"])
            return
        refresh_resolver()
        compile_module(path, req["fqn"])
        req["stale"] = stale(path)
        tmp = task_tmp(req)
        req["learn"] = should_learn(req["fqn"])
        started = clock()
        # A child that learns starts fresh: a spare's copies would count as
        # its own.
        spare = None if req["learn"] else to_spare(req, path, fds)
        if spare is not None:
            pid, box = spare
        else:
            box = None
            try:
                box = mmap.mmap(-1, BOX_BYTES)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
            except Exception as e:
                if box is not None:
                    box.close()
                for fd in fds:
                    os.close(fd)
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)
                send("error", req["id"], message="cannot start the task: %s" % e)
                return
            if pid == 0:
                BOX, LEARNING = box, req["learn"]
                try:
                    prepare()
                except BaseException:
                    os._exit(1)
                run_child(req, path, fds)
        for fd in fds:
            os.close(fd)
        children[pid] = [req["id"], tmp, started, req["fqn"], box, req["learn"]]
        send("started", req["id"], pid)


FREEZE = getattr(gc, "freeze", None)
vfork_idle_preexec()
WAKE_R, WAKE_W = os.pipe()
for fd in (WAKE_R, WAKE_W):
    os.set_blocking(fd, False)
signal.set_wakeup_fd(WAKE_W)
signal.signal(signal.SIGCHLD, lambda *_: None)
signal.signal(signal.SIGUSR1, lambda *_: None)  # a child finished its task
send("ready", pid=os.getpid())
while True:
    try:
        ready, _, _ = select.select([SOCK, WAKE_R], [], [])
    except (OSError, select.error) as e:
        if getattr(e, "errno", None) == errno.EINTR or (e.args and e.args[0] == errno.EINTR):
            continue
        raise
    if WAKE_R in ready:
        try:
            os.read(WAKE_R, 512)
        except OSError:
            pass
        collect_done()
        reap()
    if SOCK in ready:
        req, fds = recv()
        if req is None:
            break
        handle(req, fds)
for path in TMP.values():
    shutil.rmtree(path, ignore_errors=True)
