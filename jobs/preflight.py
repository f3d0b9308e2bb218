"""The one pre-flight every verb runs before Ray starts: config values, the workload's data checks, a usable store."""

from __future__ import annotations

import os

import workloads
from jobs import config as config_lib
from jobs.errors import StoreError
from jobs.fs import check_bucket, filesystem
from jobs.store import Store, store_path


def check_config(cfg) -> None:
    config_lib.check_values(cfg)
    if validate := workloads.hook(workloads.module(cfg.workload), "validate"):
        validate(cfg)


def load(config: str | None, overrides: list[str] = (), smoke_test: bool = False):
    cfg = config_lib.load_config(config, overrides, smoke_test=smoke_test)
    check_config(cfg)
    return cfg


def open_store(store_arg: str | None, cfg=None, write: bool = True) -> Store:
    """The store named by ``--store`` / $PERENNIAL_STORE / the config: its bucket answers, or its folder is writable."""
    uri = store_path(store_arg, cfg)
    fs, root = filesystem(uri, StoreError, "store")
    check_bucket(fs, root, uri, StoreError, "store")
    if write and "://" not in uri:  # a local store fails now, not after the whole run
        check_writable_dir(root, uri)
    return Store(uri)


def check_writable_dir(root: str, uri: str) -> None:
    path = root
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)  # the nearest existing folder is where the store's folders get created
    if not os.path.isdir(path):
        raise StoreError(f"store '{uri}': '{path}' is a file, not a directory — give a directory path (--store DIR)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(f"store '{uri}': '{path}' is not writable — fix its permissions or give another --store")


def prepare(config: str | None, overrides: list[str] = (), smoke_test: bool = False, store_arg: str | None = None):
    cfg = load(config, overrides, smoke_test)
    return cfg, open_store(store_arg, cfg)
