"""Many tasks at once, and what failures look like in Python."""

from spreadqueue import BlockingSender, RemoteError, TaskTimeout

with BlockingSender("calc") as calc:
    # submit returns at once; the workers run the tasks side by side
    ids = {calc.submit("add", {"a": n, "b": n}): n for n in range(10)}
    for _ in ids:
        reply = calc.receive(timeout=10)  # answers come in completion order
        print(f"{ids[reply.task_id]} + {ids[reply.task_id]} = {reply.value}")

    try:
        calc.rpc("divide", {"a": 1, "b": 0})
    except RemoteError as e:
        print(f"the worker raised {e.type_name}: {e.remote_message}")

    try:
        calc.rpc("slow", 3, timeout=1)
    except TaskTimeout as e:
        print(f"gave up: {e}")
