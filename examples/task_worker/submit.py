"""Submit background runs from plain code and print their results.

``python submit.py`` with PREFECT_API_URL set and a task worker serving
``tasks.py`` (``python serve.py``) somewhere that shares the task storage
directory (``TRIO_WORKER_TASK_STORAGE``, default ``~/.prefect/storage``).
"""

from __future__ import annotations

import tasks

if __name__ == "__main__":
    total = tasks.add.delay(40, 2)
    slug = tasks.slugify.delay("Hello, Background Tasks!")
    print("add:", total.result(timeout=60))
    print("slugify:", slug.result(timeout=60))
