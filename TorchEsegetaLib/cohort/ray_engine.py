"""The Ray engine: one Ray task per case, on a local Ray instance or a Ray cluster.

Each task declares what a case needs (``num_cpus``, ``num_gpus``, ``memory``), so Ray places
as many cases per node as fit. Tasks write their run folders themselves, straight into the
output folder: on a cluster it must be shared storage (NFS, a parallel file system) mounted at
the same path on every node. Before any case runs, one probe task on every alive node checks
that it can import TorchEsegetaLib and write into the output folder, and that the driver sees
what it wrote; the declared needs must fit at least one node. Ray is an optional dependency,
imported only here.

Ctrl-C cancels every task (a running one gets a KeyboardInterrupt, so its temporary folder is
removed), waits up to ``grace_s`` for them, then force-cancels the rest and removes what they
left.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .execute import FAILED, execute_case, make_task
from .plan import ENGINE_FOLDER, remove_partial_folders

Event = dict[str, Any]
PROBE_TIMEOUT_S = 120.0
INSTALL_HINT = 'pip install "torchesegeta[ray]"'


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise UserInputError(
            f"the Ray engine needs Ray, which is not installed: {INSTALL_HINT}"
        ) from e
    return ray


def run_case_task(task: dict[str, Any]) -> dict[str, Any]:
    """The body of a case's Ray task."""
    return execute_case(task)


def probe_node(folder: str, name: str) -> dict[str, Any]:
    """The body of a node's probe task: what it runs, and whether it can write ``folder``."""
    import socket

    import TorchEsegetaLib

    answer = {
        "host": socket.gethostname(),
        "version": TorchEsegetaLib.__version__,
        "library": str(Path(TorchEsegetaLib.__file__).parent),
    }
    try:
        Path(folder, name).write_text(answer["host"], encoding="utf-8")
    except OSError as e:
        answer["error"] = f"{e.strerror or e}"
    return answer


class RayEngine:
    """One Ray task per case (see the module)."""

    name = "ray"

    def __init__(
        self,
        address: str = "auto",
        cpus_per_case: float = 1.0,
        gpus_per_case: float | None = None,
        memory_per_case_gb: float = 2.0,
        device: str = "auto",
        grace_s: float = 20.0,
    ):
        if cpus_per_case <= 0 or memory_per_case_gb <= 0 or (gpus_per_case or 0) < 0:
            raise UserInputError(
                "--cpus-per-case and --memory-per-case must be positive, --gpus-per-case 0 or more"
            )
        self.address, self.device, self.grace_s = address, device, grace_s
        self.cpus, self.gpus, self.memory_gb = cpus_per_case, gpus_per_case, memory_per_case_gb
        self.declared: dict[str, Any] = {}

    def describe(self, cases: int) -> dict[str, Any]:
        return {"engine": self.name, "address": self.address, "per_case": self.declared}

    def run(
        self, tasks: list[dict[str, Any]], out: Path, on_event: Callable[[Event], None]
    ) -> None:
        """Run every task as a Ray task; ``on_event`` receives each case's "done" event."""
        if not tasks:
            return
        ray = import_ray()
        connected_here = not ray.is_initialized()
        if connected_here:
            self._connect(ray)
        refs: dict[Any, str] = {}
        try:
            options = self._options(ray)
            self._probe(ray, out)
            remote = ray.remote(run_case_task)
            threads = max(1, int(self.cpus))
            for task in tasks:
                ref = remote.options(**options).remote(
                    make_task(task["case"], task["job"], threads)
                )
                refs[ref] = task["case"]
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                for ref in ready:
                    on_event(self._outcome(ray, ref, refs.pop(ref), out))
        except BaseException:
            if refs:
                self._cancel(ray, refs, out, on_event)
            raise
        finally:
            if connected_here:
                ray.shutdown()

    def _connect(self, ray: Any) -> None:
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.address == "local":
            kwargs["include_dashboard"] = False
        fix = (
            "start one with `ray start --head` or use --address local for a Ray instance on this "
            "machine; a cluster with token authentication also needs RAY_AUTH_MODE=token here"
        )
        silent = _nothing_listens(self.address)
        if silent:  # ray.init would retry for minutes before it gives up
            raise UserInputError(
                f"no Ray cluster answers at --address {self.address} ({silent}); {fix}"
            )
        for attempt in range(1, CLIENT_ATTEMPTS + 1):
            try:
                ray.init(address=self.address, **kwargs)
                return
            except Exception as e:  # connection, address format, authentication: the setup's
                ray.shutdown()  # a half-made connection would break this process's next ray.init
                if attempt < CLIENT_ATTEMPTS and _client_server_died(self.address, e):
                    time.sleep(1.0)
                    continue
                raise UserInputError(
                    f"no Ray cluster answers at --address {self.address} ({_first_line(e)}); {fix}"
                ) from e

    def _options(self, ray: Any) -> dict[str, Any]:
        """The needs each case declares, checked against the largest node."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        largest = {
            key: max((n.get("Resources", {}).get(key, 0.0) for n in nodes), default=0.0)
            for key in ("CPU", "GPU", "memory")
        }
        gpus = self.gpus
        if gpus is None:
            gpus = 1.0 if self.device != "cpu" and largest["GPU"] >= 1 else 0.0
        if self.device.startswith("cuda") and largest["GPU"] < max(gpus, 1):
            raise UserInputError(
                f"the job asks for device {self.device!r} but no node of the Ray cluster has a GPU; "
                "set the template's device to auto or cpu"
            )
        memory = int(self.memory_per_case_bytes)
        for key, need, flag in (
            ("CPU", self.cpus, "--cpus-per-case"),
            ("GPU", gpus, "--gpus-per-case"),
            ("memory", memory, "--memory-per-case"),
        ):
            if need > largest[key]:
                have = largest[key] / 2**30 if key == "memory" else largest[key]
                want = need / 2**30 if key == "memory" else need
                raise UserInputError(
                    f"each case declares {want:g} {key if key != 'memory' else 'GiB of memory'} "
                    f"but the largest Ray node has {have:g}; lower {flag}"
                )
        self.declared = {"num_cpus": self.cpus, "num_gpus": gpus, "memory_gb": self.memory_gb}
        # System failures (a node lost) are retried once; a case's own errors are outcomes.
        return {"num_cpus": self.cpus, "num_gpus": gpus, "memory": memory, "max_retries": 1}

    @property
    def memory_per_case_bytes(self) -> float:
        return self.memory_gb * 2**30

    def _probe(self, ray: Any, out: Path) -> None:
        """Every alive node imports TorchEsegetaLib and writes into ``out``; the driver sees it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        folder = out / ENGINE_FOLDER
        probe = ray.remote(probe_node)
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        names = {node: f"probe-{uuid.uuid4().hex[:8]}" for node in nodes}
        refs = {
            probe.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            ).remote(str(folder), names[node]): node
            for node in nodes
        }
        try:
            ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
            if waiting:
                raise UserInputError(
                    f"{len(waiting)} Ray node(s) did not answer a probe within {PROBE_TIMEOUT_S:.0f} s; "
                    "check the cluster (`ray status`)"
                )
            for ref in ready:
                node = refs[ref]
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise UserInputError(
                        f"Ray node {node[:12]} cannot run TorchEsegeta ({_first_line(e)}); install "
                        "torchesegeta (and torch) on every node of the cluster"
                    ) from e
                if answer.get("error"):
                    raise UserInputError(
                        f"Ray node {answer['host']} cannot write into {folder}: {answer['error']}; "
                        "the output folder must be shared storage, writable from every node"
                    )
                if not (folder / names[node]).is_file():
                    raise UserInputError(
                        f"Ray node {answer['host']} wrote into {folder} but this machine does not see "
                        "the file: the output folder must be shared storage mounted at the same "
                        "path on every node"
                    )
        finally:
            for name in names.values():
                (folder / name).unlink(missing_ok=True)

    def _outcome(self, ray: Any, ref: Any, case: str, out: Path) -> Event:
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as e:  # the task itself did not finish: worker or node lost
            outcome = {
                "case": case,
                "status": FAILED,
                "kind": "internal",
                "error": f"the Ray task did not finish: {_first_line(e)}; nothing was written for it",
                "seconds": None,
            }
        remove_partial_folders(out, case)  # a retried attempt may have left one
        return {"event": "done", **outcome}

    def _cancel(
        self, ray: Any, refs: dict[Any, str], out: Path, on_event: Callable[[Event], None]
    ) -> None:
        for ref in refs:
            ray.cancel(ref, force=False)
        deadline = time.monotonic() + self.grace_s
        try:
            while refs and time.monotonic() < deadline:
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.5)
                for ref in ready:
                    case = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError:
                        remove_partial_folders(out, case)
                        continue
                    on_event({"event": "done", **outcome})  # finished before the cancel
        except KeyboardInterrupt:
            pass
        for ref, case in refs.items():
            ray.cancel(ref, force=True)
            remove_partial_folders(out, case)
        if refs:
            ray.wait(list(refs), num_returns=len(refs), timeout=5.0)
            for case in refs.values():  # a killed task may have created it after the first pass
                remove_partial_folders(out, case)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(error).__name__)[:300]


#: Connections a Ray Client driver tries: the head's proxy forks a server per client, and that
#: server dies at start now and then (gRPC's poller and fork(), ray-project/ray#63202).
CLIENT_ATTEMPTS = 4


def _client_server_died(address: str, error: BaseException) -> bool:
    """Whether ``error`` is the Ray Client head's per-client server dying at its start (worth
    another connection), not a setup problem."""
    text = str(error)
    return address.startswith("ray://") and (
        "Starting Ray client server failed" in text  # it exited
        or "start_specific_server" in text  # it died while the proxy was looking at it
    )


#: The opening of an HTTP/2 connection (RFC 9113, 3.4): the client's preface and an empty
#: SETTINGS frame. Ray's GCS and its Ray Client server speak gRPC over HTTP/2 and answer it with
#: a SETTINGS frame of their own at once.
_HTTP2_OPENING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: Seconds to connect, and then to hear anything back, before an address is given up.
CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 10.0


def _nothing_listens(
    address: str, timeout_s: float = CONNECT_TIMEOUT_S, answer_s: float = ANSWER_TIMEOUT_S
) -> str:
    """Why nothing can answer at a HOST:PORT or ray://HOST:PORT address: nothing accepts
    connections there, or something accepts them but says nothing within ``answer_s`` seconds
    to the opening of a gRPC connection (ray.init would wait on it for many minutes). "" when
    it answers (anything, even a refusal: ray.init then says what is wrong) or the address
    names no port ("auto", "local")."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return ""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as link:
            link.settimeout(answer_s)
            try:
                link.sendall(_HTTP2_OPENING)
                link.recv(1)  # any byte, or b"" when it closes: it answered
            except TimeoutError:
                return (
                    f"something accepts connections on {host}:{port} but does not answer within "
                    f"{answer_s:g} s, as no Ray server would; check the host and port"
                )
            except OSError:
                pass  # it reset the connection: it answered, ray.init will say what it is
            return ""
    except OSError as error:
        return f"nothing accepts connections on {host}:{port}: {error.strerror or error}"


def default_address() -> str:
    """RAY_ADDRESS when set (as Ray itself does), else "auto"."""
    return os.environ.get("RAY_ADDRESS") or "auto"
