"""The calc queue's handlers: what every worker of the queue can run."""

import time


def add(args):
    return args["a"] + args["b"]


def divide(args):
    return args["a"] / args["b"]  # b = 0 raises ZeroDivisionError in the worker


def slow(seconds):
    time.sleep(seconds)  # blocking is fine: plain functions run in a thread pool
    return f"slept {seconds} s"


handlers = {"add": add, "divide": divide, "slow": slow}
