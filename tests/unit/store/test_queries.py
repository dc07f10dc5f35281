"""The one query layer: the catalog's data is read and written only through store/queries.py."""
from __future__ import annotations

import re
from pathlib import Path

import nearsort

PKG = Path(nearsort.__file__).resolve().parent
SQL = re.compile(r"\.execute(many|script)?\(|\b(SELECT|INSERT|UPDATE|DELETE|BEGIN|COMMIT|ROLLBACK)\b")


def test_no_sql_outside_the_store_layer():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.parent.name == "store":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SQL.search(line):
                found.append(f"{path.relative_to(PKG)}:{n}: {line.strip()}")
    assert not found, "SQL outside nearsort/store (add a function to store/queries.py):\n" + "\n".join(found)
