"""A private PostgreSQL and a private Redis for fault tests: started by the test on spare ports,
stopped and started again at will (same data, same port), always stopped at the end. The
machine's shared services (127.0.0.1:5432 and :6379) are never touched.

    with private_postgres() as pg:               # pg.url has the gateway's schema migrated
        pg.stop(); ...; pg.start()
    with private_redis(tmp_path) as redis:       # redis.start() comes back empty (no persistence)
        ...
    with private_redis(tmp_path, tls=True) as redis:  # TLS on redis.tls_port too, its CA in
        ...                                           # redis.tls.ca (a throwaway one)

Locally a missing binary skips the test; with CI=true it fails.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import ROOT, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def require(binary: Path | str) -> str:
    found = shutil.which(str(binary))
    if found is None:
        message = f"{binary} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ", and CI=true: the fault tests must run")
        pytest.skip(message)
    return found


class PrivatePostgres:
    """PostgreSQL 15 in ``data_dir``, owned by the postgres user, on ``port``, trust auth."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"postgres://postgres@127.0.0.1:{port}/tollgate"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def init(self) -> None:
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        log = str(self.data_dir / "server.log")
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            log,
            "-w",
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: as a crash would (connections cut at once); ``fast`` is orderly."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def migrate(self) -> None:
        """Create the database and the gateway's schema in it (``manage.py migrate``)."""
        self._as_postgres(
            str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "tollgate"
        )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": self.url},
            check=True,
            capture_output=True,
            timeout=120,
        )


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA (``ca``), the server's certificate and key, and a client's, all PEM."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, and two certificates it signed: the server's names only the IP address 127.0.0.1
    (so ``localhost`` reaches the same server under a name its certificate does not carry); the
    client's is for a server that asks for one (``--tls-auth-clients yes``)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tollgate test CA")])
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths = [directory / "ca.pem"]
    for name, alt_names in (
        ("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", [x509.DNSName("tollgate-test-client")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            _certificate(subject, ca_name, key.public_key())
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{name}.pem").write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        (directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths += [directory / f"{name}.pem", directory / f"{name}.key"]
    return TlsFiles(*paths)


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


class PrivateRedis:
    """redis-server on ``port``, without persistence: after ``stop`` and ``start`` it is empty,
    as a Redis restarted without its data. With ``tls``, it also serves TLS on ``tls_port``
    with those files, asking clients for a certificate when ``tls_auth_clients`` is ``yes``."""

    def __init__(
        self,
        directory: Path,
        port: int,
        password: str | None = None,
        tls: TlsFiles | None = None,
        tls_auth_clients: str = "no",
    ) -> None:
        self.directory = directory
        self.port = port
        self.password = password  # --requirepass, when given
        self.url = f"redis://127.0.0.1:{port}/0"
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.tls_auth_clients = tls_auth_clients
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    require("redis-server"),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    *(("--requirepass", self.password) if self.password else ()),
                    *self._tls_options(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                written = (self.directory / "redis.log").read_text(errors="replace")
                tail = "\n".join(written.splitlines()[-5:])
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.05)

    def _tls_options(self) -> tuple[str, ...]:
        if self.tls is None:
            return ()
        return (
            "--tls-port",
            str(self.tls_port),
            "--tls-cert-file",
            str(self.tls.server_cert),
            "--tls-key-file",
            str(self.tls.server_key),
            "--tls-ca-cert-file",
            str(self.tls.ca),
            "--tls-auth-clients",
            self.tls_auth_clients,
        )

    def _answers(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A migrated private PostgreSQL; stopped and removed at the end whatever happened. Its
    data lives under /tmp, not pytest's tmp_path, which the postgres user may not enter."""
    for name in ("initdb", "pg_ctl", "createdb"):
        require(PG_BIN / name)
    require("runuser")
    home = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
    shutil.chown(home, "postgres", "postgres")
    server = PrivatePostgres(home / "data", free_port())
    try:
        server.init()
        server.start()
        server.migrate()
        yield server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def private_redis(
    tmp: Path, password: str | None = None, tls: bool = False, tls_auth_clients: str = "no"
) -> Iterator[PrivateRedis]:
    """A private Redis (asking for ``password``, if given; serving TLS too with a throwaway CA
    made in ``tmp``, if ``tls``); stopped at the end whatever happened."""
    files = make_tls_files(tmp / "tls") if tls else None
    server = PrivateRedis(tmp / "redis", free_port(), password, files, tls_auth_clients)
    server.start()
    try:
        yield server
    finally:
        server.stop()
