#!/usr/bin/env python3
"""A container engine on a machine without Docker: Debian's podman serving the Docker API,
and local stand-ins for the images the compose files and docker/Dockerfile name.
Run `scripts/containers.py --help` for the interface."""

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PODMAN_CONF = ROOT / "docker/podman/containers.conf"
STAND_INS = ROOT / "docker/stand-ins"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR") or "http://deb.debian.org/debian"
PACKAGES = ["podman", "runc", "debootstrap", "netavark", "aardvark-dns", "iptables", "uidmap",
            "curl"]
STAND_IN_LABEL = "org.flatpack.local-stand-in"
RECIPE_LABEL = "org.flatpack.stand-in.recipe"

DESCRIPTION = """\
Runs containers on a machine with no Docker engine and no reachable image registry, for the
container tests of scripts/test.sh. Users with Docker need none of this."""

EPILOG = f"""\
commands:
  install               apt-get install what is missing of
                          {' '.join(PACKAGES)}
  images                Build the local stand-in images, each once (kept in podman's storage;
                        rebuilt when its recipe changes), tagged with the names the compose
                        files and docker/Dockerfile use:
                          debian:bookworm-slim      debootstrap --variant=minbase
                          rust:<v>-bookworm         + build tools + this machine's Rust <v>
                          apache/kafka:<v>          Maven Central jars (scripts/kafka.sh) on
                                                    Debian's JRE
                          axllent/mailpit:<v>       the Go build of scripts/mailpit.sh
                          jaegertracing/jaeger:<v>  the Go build of scripts/tool.sh jaeger
                          prom/prometheus:<v>       the Go build of scripts/tool.sh prometheus
                        Each has the label {STAND_IN_LABEL}.
  serve [--data-dir D]  Install if needed and serve the Docker API (`podman system service`) on
                        D/podman.sock (D: default a new temp dir), with a runner of the
                        containers' healthchecks (podman leaves them to systemd, which is not
                        there), in the foreground until SIGTERM or Ctrl-C. It prints
                          CONTAINERS_CONF={PODMAN_CONF}
                          DOCKER_HOST=unix://<data-dir>/podman.sock
                        and serves once GET /_ping on that socket answers. Containers it
                        started keep running: `docker compose down` first.
  env                   Print CONTAINERS_CONF=... (for podman commands typed by hand).

podman is configured by docker/podman/containers.conf (runc, cgroupfs, ulimits within the
machine's hard limits), passed as CONTAINERS_CONF: /etc is not edited. Export it for podman
commands typed by hand (`eval "$(scripts/containers.py env)"`).

environment:
  FLATPACK_CACHE_DIR    cache root (default ~/.cache/flatpack); the Debian rootfs tarball
                        is kept in <cache>/images
  DEBIAN_MIRROR         mirror for debootstrap (default {DEBIAN_MIRROR})"""


def log(message: str) -> None:
    print(f"containers.py: {message}", file=sys.stderr, flush=True)


def die(message: str) -> NoReturn:
    sys.exit(f"containers.py: error: {message}")


def cache_dir() -> str:
    """Root of everything downloaded or built, as scripts/lib.sh has it (recipes hash its paths)."""
    return os.environ.get("FLATPACK_CACHE_DIR") or f"{Path.home()}/.cache/flatpack"


def run(args: list[str], failure: str, **env: str) -> str:
    """Runs a command (with <env> added), its stderr passed through; returns its stdout and dies
    naming <failure> when it fails."""
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    except OSError as e:
        die(f"{failure}: {args[0]}: {e.strerror}")
    if proc.returncode:
        die(f"{failure} (exit status {proc.returncode})")
    return proc.stdout


def ask(args: list[str]) -> str | None:
    """The stdout of a command whose failure is an answer (None), not an error."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True)
    except OSError:
        return None
    return None if proc.returncode else proc.stdout.strip()


def run_logged(args: list[str], log_file: str, failure: str, lines: int) -> None:
    """Runs a noisy command with its output in <log_file>, removed after success; on failure
    shows the log's last <lines> and dies naming <failure>."""
    with open(log_file, "w") as out:
        try:
            status = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT).returncode
        except OSError as e:
            die(f"{failure}: {args[0]}: {e.strerror}")
    if status:
        sys.stderr.writelines(Path(log_file).read_text(errors="replace").splitlines(True)[-lines:])
        die(failure)
    os.unlink(log_file)


def need_cmd(name: str) -> str:
    return shutil.which(name) or die(f"'{name}' is required but not on PATH")


# ---------------------------------------------------------------- install


def cmd_install() -> None:
    def installed(package: str) -> bool:
        return "install ok installed" in (ask(["dpkg-query", "-W", "-f=${Status}", package]) or "")

    missing = [p for p in PACKAGES if not installed(p)]
    if not missing:
        return
    need_cmd("apt-get")
    log(f"installing {' '.join(missing)} from Debian")
    for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *missing]):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", *args], stdout=sys.stderr, env=env).returncode:
            die(f"apt-get {' '.join(args)} failed")


# ---------------------------------------------------------------- images


def compose_image(file: str, prefix: str) -> str:
    """The image a compose file names: its first `image:` line starting with <prefix>."""
    text = (ROOT / file).read_text()
    found = re.search(rf"^\s*image:\s*({re.escape(prefix)}\S*)", text, re.M)
    return found[1] if found else die(f"{file} names no {prefix} image")


def dockerfile_arg(name: str) -> str:
    found = re.search(rf"^ARG {name}=(.+)$", (ROOT / "docker/Dockerfile").read_text(), re.M)
    return found[1] if found else die(f"docker/Dockerfile has no ARG {name}=...")


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def files_under(top: str | Path, suffix: str = "") -> list[str]:
    """The regular files below <top> whose names end in <suffix> (as `find -type f`), sorted."""
    return sorted(
        path
        for folder, _, names in os.walk(top)
        for path in (os.path.join(folder, name) for name in names if name.endswith(suffix))
        if not os.path.islink(path)
    )


def recipe_of(text: str, *paths: str | Path) -> str:
    """A fingerprint of everything an image is made from: text, files, and the ids of its bases.
    The bytes are those the bash version fed to sha256sum, so that its images stay current."""
    lines = [text]
    for path in paths:
        for file in files_under(path) if os.path.isdir(path) else [str(path)]:
            lines.append(f"{sha256(Path(file).read_bytes())}  {file}")
    return sha256("".join(f"{line}\n" for line in lines))[:16]


def image_id(image: str) -> str:
    return run(["podman", "image", "inspect", "--format", "{{.Id}}", image],
               f"podman image inspect {image}").strip()


def image_current(image: str, recipe: str) -> bool:
    """Is <image> there with <recipe>? Says so when it is."""
    label = ask(["podman", "image", "inspect", "--format",
                 f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', image])
    if label == recipe:
        log(f"{image}: local stand-in is current (recipe {recipe})")
    return label == recipe


def tag(image: str) -> str:
    return image.rpartition(":")[2]


def debian_sources(suite: str) -> str:
    """The sources the official image has."""
    return "\n".join(
        f"Types: deb\nURIs: http://deb.debian.org/{archive}\nSuites: {suites}\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        for archive, suites in (("debian", f"{suite} {suite}-updates"),
                                ("debian-security", f"{suite}-security"))
    )


def debootstrap(suite: str, cas: list[str], tarball: Path) -> None:
    """A minbase rootfs of <suite> with the CA certificates <cas>, packed into <tarball>."""
    root = Path(tempfile.mkdtemp(prefix="flatpack-rootfs."))
    try:
        run_logged(["debootstrap", "--variant=minbase", suite, str(root), DEBIAN_MIRROR],
                   f"{root}.log", f"debootstrap {suite} failed", 40)
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(debian_sources(suite))
        # The machine's own certificate authorities, which it needs to reach crates.io and the
        # other registries (a TLS-inspecting proxy): images that install ca-certificates trust
        # them as the machine does.
        if cas:
            (root / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
        for ca in cas:
            shutil.copy(ca, root / "usr/local/share/ca-certificates")
        # No package lists, downloaded .debs or logs kept.
        for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin",
                        "var/cache/apt/archives/*.deb", "var/log/*"):
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        run(["tar", "--numeric-owner", "-C", str(root), "-cf", f"{tarball}.tmp", "."],
            "packing the rootfs failed")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.replace(f"{tarball}.tmp", tarball)


def build_debian(image: str) -> None:
    suite = tag(image).removesuffix("-slim")
    cas = files_under("/usr/local/share/ca-certificates", ".crt")
    recipe = recipe_of(f"debootstrap --variant=minbase {suite} {DEBIAN_MIRROR} v1", *cas)
    if image_current(image, recipe):
        return
    tarball = Path(cache_dir(), "images", f"debian-{suite}-minbase-{recipe}.tar")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    if not (tarball.exists() and tarball.stat().st_size):
        log(f"{image}: debootstrap --variant=minbase {suite} (about 30 s)")
        debootstrap(suite, cas, tarball)
    log(f"{image}: podman import {tarball}")
    changes = [
        f'LABEL {STAND_IN_LABEL}="{image} from debootstrap --variant=minbase {suite} by '
        'scripts/containers.py; not the official image"',
        f"LABEL {RECIPE_LABEL}={recipe}",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["bash"]',
    ]
    run(["podman", "import", "-q", *(arg for c in changes for arg in ("--change", c)),
         str(tarball), f"docker.io/library/{image}"], f"podman import of {tarball} failed")


def podman_build(image: str, context: str | Path, recipe: str, *args: str) -> None:
    fd, build_log = tempfile.mkstemp(prefix="flatpack-build.")
    os.close(fd)
    log(f"{image}: podman build {context} (log: {build_log})")
    run_logged(["podman", "build", "--pull=never", "--layers=false",
                "--build-arg", f"RECIPE={recipe}", "-t", f"docker.io/{image}",
                "-f", f"{context}/Containerfile", *args, str(context)],
               build_log, f"building the stand-in {image} failed", 60)


def rust_toolchain(version: str) -> str | None:
    """The machine's own toolchain of <version> (no download: rustup's servers are not
    reachable)."""
    listing = run([need_cmd("rustup"), "toolchain", "list"], "rustup toolchain list")
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        said = ask(["rustup", "run", name, "rustc", "--version"]) or ""
        if re.match(rf"rustc {re.escape(version)}[. ]", said):
            return name
    return None


def build_rust(image: str, debian: str) -> None:
    version = image.partition(":")[2].removesuffix("-bookworm")
    toolchain = rust_toolchain(version) or die(f"{image} needs a Rust {version} toolchain on this "
                                                "machine (rustup toolchain list has none)")

    def rustc(*args: str) -> str:
        return run(["rustup", "run", toolchain, "rustc", *args], f"rustc {' '.join(args)}")

    full = rustc("--version").split()[1]
    recipe = recipe_of(f"{image_id(debian)} {full} {sha256(rustc('-vV'))}  -", STAND_INS / "rust")
    if not image_current(image, recipe):
        podman_build(f"library/{image}", STAND_INS / "rust", recipe,
                     "--build-arg", f"RUST_VERSION={version}",
                     "--build-arg", f"TOOLCHAIN={full}-x86_64-unknown-linux-gnu",
                     "-v", f"{rustc('--print', 'sysroot').strip()}:/mnt/toolchain:ro",
                     "-v", f"{shutil.which('rustup')}:/mnt/rustup:ro")


def build_kafka(image: str, debian: str) -> None:
    version = image.partition(":")[2]
    run([str(SCRIPTS / "kafka.sh"), "fetch"], f"fetching Kafka {version} failed",
        KAFKA_VERSION=version)
    libs = f"{cache_dir()}/kafka-{version}/libs"
    jars = "".join(sorted(f"{os.path.basename(jar)} {os.lstat(jar).st_size}\n"
                          for jar in files_under(libs, ".jar")))
    recipe = recipe_of(f"{image_id(debian)} {version} {sha256(jars)}  -", STAND_INS / "kafka")
    if not image_current(image, recipe):
        podman_build(image, STAND_INS / "kafka", recipe, "--build-arg", f"KAFKA_VERSION={version}",
                     "-v", f"{libs}:/mnt/kafka-libs:ro")


def build_from_binary(image: str, debian: str, stand_in: str, binary: str) -> None:
    """A stand-in whose one program is <binary>, built on this machine and copied beside the
    Containerfile of docker/stand-ins/<stand_in> (which gets the image's tag as VERSION)."""
    recipe_dir = STAND_INS / stand_in
    recipe = recipe_of(f"{image_id(debian)} {tag(image)}", binary, recipe_dir)
    if image_current(image, recipe):
        return
    with tempfile.TemporaryDirectory(prefix="flatpack-image.") as context:
        shutil.copy(recipe_dir / "Containerfile", context)
        shutil.copy(binary, context)
        podman_build(image, context, recipe, "--build-arg", f"VERSION={tag(image)}")


def build_mailpit(image: str, debian: str) -> None:
    version = tag(image)
    run([str(SCRIPTS / "mailpit.sh"), "fetch"], f"building Mailpit {version} failed",
        MAILPIT_VERSION=version)
    binary = f"{cache_dir()}/bin/mailpit"
    # Not its exit status: that fails when GitHub, asked for the latest release, is unreachable.
    said = subprocess.run([binary, "version"], capture_output=True, text=True).stdout
    if f" {version} " not in said:
        die(f"{binary} is not Mailpit {version}")
    build_from_binary(image, debian, "mailpit", binary)


def go_module_version(image: str) -> str:
    """jaegertracing/jaeger:2.M.P and prom/prometheus:v3.M.P are built from Go modules versioned
    v1.(M+63).P and v0.3MM.P."""
    if image.startswith("jaegertracing/jaeger:") and (
            m := re.fullmatch(r"2\.(\d+)\.(\d+)", tag(image))):
        return f"v1.{int(m[1]) + 63}.{m[2]}"
    if image.startswith("prom/prometheus:") and (
            m := re.fullmatch(r"v3\.(\d+)\.(\d+)", tag(image))):
        return f"v0.3{int(m[1]):02d}.{m[2]}"
    die(f"no Go module version known for {image}")


def build_go_tool(image: str, debian: str, tool: str) -> None:
    """A stand-in from scripts/tool.sh's build of the image's Go module; it prints TOOL=<path>."""
    key = tool.upper()
    out = run([str(SCRIPTS / "tool.sh"), tool], f"building {tool} for {image} failed",
              **{f"{key}_VERSION": go_module_version(image)})
    paths = [line.removeprefix(f"{key}=") for line in out.splitlines()
             if line.startswith(f"{key}=")]
    if not paths:
        die(f"scripts/tool.sh {tool} printed no {key}=<path>")
    build_from_binary(image, debian, tool, paths[0])


def cmd_images() -> None:
    start = time.monotonic()
    cmd_install()
    release = dockerfile_arg("DEBIAN_RELEASE")
    debian = f"debian:{release}-slim"
    rust = f"rust:{dockerfile_arg('RUST_VERSION')}-{release}"
    kafka = compose_image("docker-compose-kafka.yml", "apache/kafka")
    mailpit = compose_image("docker-compose-services.yml", "axllent/mailpit")
    jaeger = compose_image("docker-compose-services.yml", "jaegertracing/jaeger")
    prometheus = compose_image("docker-compose-services.yml", "prom/prometheus")
    build_debian(debian)
    build_rust(rust, debian)
    build_kafka(kafka, debian)
    build_mailpit(mailpit, debian)
    build_go_tool(jaeger, debian, "jaeger")
    build_go_tool(prometheus, debian, "prometheus")
    # Stand-ins replaced by a rebuild are left untagged: drop them.
    ask(["podman", "image", "prune", "-f", "--filter", f"label={STAND_IN_LABEL}"])
    images = " ".join((debian, rust, kafka, mailpit, jaeger, prometheus))
    log(f"stand-in images ready in {time.monotonic() - start:.0f}s: {images}")


# ---------------------------------------------------------------- healthchecks


def go_duration_secs(duration: str) -> int:
    """Whole seconds of a Go duration as podman prints it ("10s", "1m30s", "500ms"); at least 1."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"([0-9.]+)(h|ms|m|s|us|µs|ns)", duration)
    return max(1, sum(int(float(n)) * units.get(unit, 0) for n, unit in parts))


def run_healthchecks(stop: threading.Event) -> None:
    """podman schedules each container's healthcheck with a systemd timer; with no systemd (as
    here) no check ever runs and every container stays "starting", so that compose's
    `condition: service_healthy` would wait forever. This loop is that timer: it runs
    `podman healthcheck run` for every running container that has a healthcheck, every
    interval of its own once healthy, and every 2 s while it is starting or unhealthy; never
    a second run of one container's check while its previous run is still going (a check that
    starts a JVM can take longer than its interval on a busy machine). Runs until <stop>."""
    last: dict[str, float] = {}
    intervals: dict[str, int] = {}
    running: dict[str, subprocess.Popen] = {}
    while not stop.wait(1):
        listing = ask(["podman", "ps", "--filter", "health=starting", "--filter", "health=healthy",
                       "--filter", "health=unhealthy", "--format", "{{.ID}} {{.Status}}"]) or ""
        for cid, status in re.findall(r"^([0-9a-f]+) .*\(([a-z]+)\)$", listing, re.M):
            if cid in running and running[cid].poll() is None:
                continue
            interval = 2
            if status == "healthy":
                if cid not in intervals:
                    said = ask(["podman", "inspect", "--format",
                                "{{.Config.Healthcheck.Interval}}", cid])
                    intervals[cid] = go_duration_secs(said or "10s")
                interval = intervals[cid]
            if time.monotonic() - last.get(cid, -interval) >= interval:
                last[cid] = time.monotonic()
                running[cid] = subprocess.Popen(["podman", "healthcheck", "run", cid],
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
        running = {cid: check for cid, check in running.items() if check.poll() is None}
    for check in running.values():
        check.terminate()
        check.wait()


# ---------------------------------------------------------------- service


def cmd_serve(data_dir: str | None) -> int:
    """The Docker API on <data-dir>/podman.sock and the healthcheck runner, in the foreground
    until SIGTERM or SIGINT (which stop both); the API service also dies with this process."""
    try:
        data = Path(data_dir or tempfile.mkdtemp(prefix="flatpack-podman."))
        data.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        die(f"cannot create the data directory {data_dir}: {e.strerror}")
    cmd_install()
    sock = data.resolve() / "podman.sock"
    sock.unlink(missing_ok=True)
    # The kernel sends the service SIGTERM when this process dies, SIGKILLed or not. (When the
    # thread that started it dies, in fact: hence the main thread.)
    api = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "--",
                            "podman", "system", "service", "--time=0", f"unix://{sock}"])
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if api.returncode is None:
            api.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop = threading.Event()
    checks = threading.Thread(target=run_healthchecks, args=(stop,), name="healthchecks")
    checks.start()
    try:
        version = (ask(["podman", "--version"]) or "").rpartition(" ")[2]
        log(f"podman {version} serves the Docker API on {sock}")
        print(f"CONTAINERS_CONF={PODMAN_CONF}\nDOCKER_HOST=unix://{sock}", flush=True)
        status = api.wait()
    finally:
        stop.set()
        checks.join()
    if not stopping:
        die(f"podman system service exited by itself (exit status {status})")
    log("stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/containers.py", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>",
                                     help="see below")
    for name in ("install", "images", "env"):
        commands.add_parser(name)
    commands.add_parser("serve").add_argument("--data-dir", metavar="D",
                                              help="where podman.sock goes")
    args = parser.parse_args()
    # Every podman call, ours and those of the scripts we run, reads this configuration.
    os.environ["CONTAINERS_CONF"] = str(PODMAN_CONF)
    if args.command == "install":
        cmd_install()
    elif args.command == "images":
        cmd_images()
    elif args.command == "serve":
        return cmd_serve(args.data_dir)
    else:
        print(f"CONTAINERS_CONF={PODMAN_CONF}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
