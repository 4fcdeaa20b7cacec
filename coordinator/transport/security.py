"""Multi-node transport security: CURVE keys derived from one job-wide secret, and the bind address.

One node uses ``ipc://`` in a 0700 directory. Across nodes the aggregator binds TCP on the one
interface that reaches ``MASTER_ADDR`` (never ``*``) and requires CURVE: the server and client
key pairs are derived from a secret every rank of the job holds (``COORDINATOR_SECRET`` or a 0600
file named by ``COORDINATOR_SECRET_FILE``), and a ZAP handler admits only the client key, so only
holders of the secret can connect. The secret never appears on a command line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth.thread

from coordinator.core import env as _env
from coordinator.errors import ConfigError

__all__ = ["CurveKeys", "bind_address", "load_secret", "refused_clients", "server_auth"]

_log = logging.getLogger(__name__)
_MIN_SECRET_CHARS = 16


def load_secret() -> str | None:
    """The job secret from the environment or its 0600 file; None when neither is set.

    Raises:
        ConfigError: too short, or a secret file others can read.
    """
    secret = os.environ.get(_env.COORDINATOR_SECRET)
    path = os.environ.get(_env.COORDINATOR_SECRET_FILE)
    if not secret and path:
        p = Path(path)
        try:
            st = p.stat()
        except OSError as e:
            raise ConfigError(f"{_env.COORDINATOR_SECRET_FILE}={path}: {e}") from e
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} must be readable by its owner only (chmod 600)")
        secret = p.read_text().strip()
    if not secret:
        return None
    if len(secret) < _MIN_SECRET_CHARS:
        raise ConfigError(f"the job secret must be at least {_MIN_SECRET_CHARS} characters")
    return secret


def _keypair(secret: str, role: bytes) -> tuple[bytes, bytes]:
    seed = hashlib.sha256(b"coordinator-curve-" + role + b"\0" + secret.encode()).digest()
    secret_key = zmq.utils.z85.encode(seed)
    return zmq.curve_public(secret_key), secret_key


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The job's server and client CURVE key pairs (Z85), derived from its secret."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_secret(cls, secret: str) -> CurveKeys:
        """Derive both key pairs; every rank computes the same ones."""
        sp, ss = _keypair(secret, b"server")
        cp, cs = _keypair(secret, b"client")
        return cls(sp, ss, cp, cs)

    def apply_server(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server (call before bind)."""
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def apply_client(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE client of the job's server (call before connect)."""
        sock.curve_secretkey = self.client_secret
        sock.curve_publickey = self.client_public
        sock.curve_serverkey = self.server_public


class _AllowJobKey:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key == self.key
        if not ok:
            self.refused += 1
            n = self.refused
            if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: a flood of intruders does not flood the log
                _log.warning("refused a CURVE client that does not hold the job secret (%d so far)", n)
        return ok


def server_auth(ctx: zmq.Context[zmq.Socket[bytes]], keys: CurveKeys) -> zmq.auth.thread.ThreadAuthenticator:
    """Start a ZAP handler on ``ctx`` that admits only the job's client key; stop() it at exit."""
    auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=_log)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_AllowJobKey(keys.client_public))
    return auth


def refused_clients(auth: zmq.auth.thread.ThreadAuthenticator) -> int:
    """How many clients the allow-list of :func:`server_auth` refused (they held the server's public
    key, so they got past the CURVE handshake, but not the job secret)."""
    provider = auth.credentials_providers.get("*")
    return provider.refused if isinstance(provider, _AllowJobKey) else 0


def bind_address(master_addr: str | None, master_port: str | None) -> str:
    """The local IP of the interface that routes to ``MASTER_ADDR`` (never 0.0.0.0).

    Raises:
        ConfigError: ``MASTER_ADDR`` is unset or unresolvable.
    """
    if not master_addr:
        raise ConfigError(f"multi-node runs need {_env.MASTER_ADDR} to choose the interface to bind")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master_addr, int(master_port or 9)))  # UDP connect sends nothing
            return str(s.getsockname()[0])
    except OSError as e:
        raise ConfigError(f"cannot find the interface that reaches {master_addr}: {e}") from e
