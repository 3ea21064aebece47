"""Safe ``_target_`` instantiation: only ptcli's own components can be built from a config.

A run directory may come from someone else; its ``config.yaml`` must not be able to make ptcli import
or call arbitrary code (``_target_: os.system``). Every ``_target_`` in a node is checked before Hydra
instantiates anything.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ptcli.errors import UsageError

ALLOWED_PREFIXES = ("ptcli.",)


def check_targets(node: Any, where: str = "config") -> None:
    """Raise ``UsageError`` if any ``_target_`` in ``node`` (a config or plain container) is not ptcli's."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                target = str(value)
                if not target.startswith(ALLOWED_PREFIXES) or "__" in target:
                    raise UsageError(
                        f"{where}: refusing _target_ '{target}': only ptcli's own components "
                        f"({', '.join(p + '*' for p in ALLOWED_PREFIXES)}) can be instantiated. The config may "
                        "have been tampered with."
                    )
            else:
                check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            check_targets(item, f"{where}[{i}]")


def instantiate(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` after checking every ``_target_`` in ``node``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    check_targets(node, where)
    try:
        return hydra_instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UsageError):
            raise cause from None
        raise UsageError(f"{where}: cannot build {node.get('_target_')}: {exc}") from exc
