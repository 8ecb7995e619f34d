"""Connected components of linked items, for dedupe's duplicate groups and split's units."""

from __future__ import annotations

import numpy as np


def linked_components(n_items: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component number of each of ``n_items`` items linked by the pairs (a[k], b[k]).

    Components are numbered from 0 in the order of their first item, so the numbering does not
    depend on how the links were listed.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n_items == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n_items, n_items))
    _, labels = connected_components(graph, directed=False)
    _, first_of_label = np.unique(labels, return_index=True)
    renumber = np.empty(first_of_label.size, dtype=np.int64)
    renumber[np.argsort(first_of_label, kind="stable")] = np.arange(first_of_label.size)
    return renumber[labels]
