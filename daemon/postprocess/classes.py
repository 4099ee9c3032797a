"""Class filters written by name or id, resolved against the model's class names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def resolve_classes(
    items: Sequence[str | int] | None, names: Sequence[str], where: str
) -> npt.NDArray[np.int64] | None:
    """Sorted class ids of ``items`` (None: every class); raises ``ValueError`` naming
    ``where`` (a config key) for a class the model does not have."""
    if items is None:
        return None
    ids: set[int] = set()
    for item in items:
        if isinstance(item, int) and 0 <= item < len(names):
            ids.add(item)
        elif isinstance(item, str) and item in names:
            ids.add(list(names).index(item))
        else:
            raise ValueError(f"{where}: the model has no class {item!r}")
    return np.asarray(sorted(ids), dtype=np.int64)


def class_name(names: Sequence[str], class_id: int) -> str:
    """The model's name of ``class_id``, or the id as text for one the model does not name."""
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)
