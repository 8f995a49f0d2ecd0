"""YAML files read safely (``yaml.safe_load``), every error naming the file on one line."""

from __future__ import annotations

import os
from typing import Any

from latentcube.errors import LatentcubeError

__all__ = ["read_yaml"]


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The content of a YAML file, read with ``yaml.safe_load`` (no Python objects).

    Raises
    ------
    LatentcubeError
        For a missing or unreadable file, invalid YAML, or a Python tag (which
        ``safe_load`` never constructs), naming the file and the line.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.MarkedYAMLError as err:
        where = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        what = err.problem or "invalid YAML"
        if isinstance(err, yaml.constructor.ConstructorError):
            what = f"{what}; only plain YAML is read, never Python objects"
        raise LatentcubeError(f"{path}{where}: {what}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LatentcubeError(f"{path}: not a readable YAML file ({err})") from None
    except OSError as err:
        raise LatentcubeError(f"{path}: {err.strerror or err}") from None
