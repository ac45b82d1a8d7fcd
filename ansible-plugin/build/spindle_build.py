"""A PEP 517 build backend for `pip install ./ansible-plugin`.

The wheel carries the Python side (`spindle_ansible`, with the connection
and strategy plugins inside it), the `spindle` controller binary and the
agents it pushes to targets, all built from this checkout with cargo:

    spindle_ansible/bin/spindle
    spindle_ansible/agents/{manifest.json, spindle-agent-<arch>[.xz]}

The controller finds the agents next to its own binary; the plugins find
the binary inside the package. Only the standard library is used, so the
build needs nothing from a package index.
"""

import base64
import hashlib
import json
import os
import platform
import stat
import subprocess
import zipfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(HERE)
NAME = "spindle_ansible"


def _version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        for line in f:
            key, _, value = line.partition("=")
            if key.strip() == "version":
                return value.strip().strip('"')
    raise RuntimeError("no version in Cargo.toml")


def _metadata(version):
    return (
        "Metadata-Version: 2.1\n"
        "Name: spindle-ansible\n"
        "Version: %s\n"
        "Summary: Ansible's remote steps over one SSH connection per host, run by an in-memory agent\n"
        "Requires-Python: >=3.11\n"
        "Requires-Dist: ansible-core>=2.17\n" % version
    )


def _tag():
    machine = platform.machine()
    return "py3-none-linux_%s" % machine


def _cargo(*args):
    cargo = os.environ.get("CARGO", "cargo")
    if not os.path.isfile(os.path.join(ROOT, "Cargo.toml")):
        raise RuntimeError("spindle-ansible builds from a Spindle checkout: no Cargo.toml in %s" % ROOT)
    try:
        subprocess.run([cargo, *args], cwd=ROOT, check=True, stdout=2)
    except FileNotFoundError:
        raise RuntimeError("building spindle-ansible needs cargo (Rust's build tool) on PATH") from None


def _build():
    """Builds the agents and the release controller; returns (binary, agents dir)."""
    _cargo("xtask", "build-agents")
    _cargo("build", "--release", "--quiet", "--package", "spindle-controller")
    # cargo honours CARGO_TARGET_DIR; xtask always writes target/agents.
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "release", "spindle"), os.path.join(ROOT, "target", "agents")


def _files():
    """(path in the wheel, path on disk) of every file to ship."""
    binary, agents = _build()
    files = [("%s/bin/spindle" % NAME, binary)]
    with open(os.path.join(agents, "manifest.json")) as f:
        json.load(f)  # a whole manifest, not a half-written one
    for entry in sorted(os.listdir(agents)):
        if entry == "manifest.json" or entry.startswith("spindle-agent-"):
            files.append(("%s/agents/%s" % (NAME, entry), os.path.join(agents, entry)))
    for sub, dest in (
        ("spindle_ansible", NAME),
        ("connection_plugins", NAME + "/connection_plugins"),
        ("serve_ssh", NAME + "/serve_ssh"),
        ("serve_local", NAME + "/serve_local"),
        ("strategy_plugins", NAME + "/strategy_plugins"),
    ):
        src = os.path.join(HERE, sub)
        for entry in sorted(os.listdir(src)):
            if entry.endswith(".py"):
                files.append(("%s/%s" % (dest, entry), os.path.join(src, entry)))
    return files


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d\n" % (path, digest, len(data))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version = _version()
    tag = _tag()
    dist_info = "%s-%s.dist-info" % (NAME, version)
    filename = "%s-%s-%s.whl" % (NAME, version, tag)
    record = []
    tmp = os.path.join(wheel_directory, filename + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as whl:

        def add(arcname, data, mode=0o644):
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, data)
            record.append(_record_line(arcname, data))

        for arcname, path in _files():
            with open(path, "rb") as f:
                data = f.read()
            executable = os.stat(path).st_mode & 0o111
            add(arcname, data, 0o755 if executable else 0o644)
        add(dist_info + "/METADATA", _metadata(version).encode())
        add(
            dist_info + "/WHEEL",
            (
                "Wheel-Version: 1.0\nGenerator: spindle_build\n"
                "Root-Is-Purelib: false\nTag: %s\n" % tag
            ).encode(),
        )
        add(
            dist_info + "/entry_points.txt",
            b"[console_scripts]\nspindle = spindle_ansible.cli:main\n",
        )
        record.append(dist_info + "/RECORD,,\n")
        info = zipfile.ZipInfo(dist_info + "/RECORD", date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        whl.writestr(info, "".join(record))
    os.replace(tmp, os.path.join(wheel_directory, filename))
    return filename


def get_requires_for_build_wheel(config_settings=None):
    return []
