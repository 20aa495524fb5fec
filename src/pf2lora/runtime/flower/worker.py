"""A long-lived ClientApp process for a SuperNode started with ``--isolation process``.

Why this exists: in flwr 1.41 a SuperNode's ``flower-superexec`` starts a new ``flwr-clientapp`` process
for every message, and that process exits after one reply (``flwr/supernode/runtime/run_clientapp.py``).
A personalized client would then load its frozen base model every round. This worker takes the place of
``flower-superexec`` for one SuperNode: it acquires the node's ClientApp tasks and runs each in *this*
process, the way ``flwr-clientapp`` runs one, so the app's module state (pf2lora's node client: model,
data, private state) survives across messages. It uses flwr's runtime client functions, which are not a
public API: the ``flower`` extra pins flwr to 1.41.0 for this reason.

    python -m pf2lora.runtime.flower.worker --runtime-api-address 127.0.0.1:9094 [--parent-pid PID]
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from logging import ERROR, INFO

from flwr.app import Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime import run_clientapp
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from pf2lora.runtime.flower.polling import retry_pulls_sooner

#: Seconds between polls for a task when the node has none.
POLL = 0.1

retry_pulls_sooner(run_clientapp)  # a task's message objects reach the SuperNode a moment after the task


def _client(address: str, interceptors: list) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def run_task(address: str, token: str, installed: set[str]) -> None:
    """Pull one task's message, answer it with the app's ClientApp, push the reply (as flwr-clientapp does)."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)]
    client = _client(address, interceptors)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "unknown"
    try:
        message, context, run, fab = pull_task_input(client)
        if fab.hash_str not in installed:  # an app bundle is installed once per version
            install_from_fab(fab.content, skip_prompt=True)
            installed.add(fab.hash_str)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        reply = load(run.fab_id, run.fab_version, fab.hash_str)(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as e:
        log(ERROR, "ClientApp raised an exception", exc_info=e)
        details = f"{type(e)}:<'{e}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def main(argv: list[str] | None = None) -> None:
    """Serve the SuperNode's ClientApp tasks until it (``--parent-pid``) exits or this process is stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="The SuperNode's --port address.")
    parser.add_argument("--parent-pid", type=int, default=None, help="Exit when this process (the SuperNode) ends.")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    acquire = _client(args.runtime_api_address, [RuntimeVersionHttpInterceptor(component_name="SuperExec")])
    installed: set[str] = set()
    log(INFO, "pf2lora ClientApp worker %s serving %s", os.getpid(), args.runtime_api_address)
    # import the app and the libraries its first message needs now, while the SuperLink starts the run
    importlib.import_module("pf2lora.runtime.flower.app")
    importlib.import_module("pf2lora.experiment")
    importlib.import_module("transformers")
    while True:
        if args.parent_pid and not _alive(args.parent_pid):
            return
        try:
            res = acquire.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        except Exception:  # the SuperNode is starting or restarting
            time.sleep(1.0)
            continue
        if res.HasField("task") and res.token:
            run_task(args.runtime_api_address, res.token, installed)
        else:
            time.sleep(POLL)


if __name__ == "__main__":
    main()
