"""The browser page: the task table filled into ``www/index.html``."""

import os
import time

from .. import VERSION_STRING
from ..schema import Field, TaskStatus
from ..services import installed_path
from ..states import list_tasks
from .request import Response


def html_page(store, config, request):
    """The browser's task list: a template from www/, rows escaped here."""
    import html
    from string import Template
    records = list(reversed(list_tasks(store, config)))
    rows = ''.join(_html_row(r, html.escape) for r in records)
    with open(installed_path(os.path.join('www', 'index.html')), encoding='utf-8') as handle:
        template = Template(handle.read())
    page = template.safe_substitute(
        server=html.escape(config.serverName), version=html.escape(VERSION_STRING),
        count=len(records), rows=rows)
    return Response(page, 200, 'text/html; charset=utf-8')


def _html_row(record, escape):
    ctime = float(record.get(Field.CTIME) or 0)
    end = float(record.get(Field.ETIME) or time.time())
    task_id = record.get(Field.ID, '')
    out = record.get(Field.OUT, '')
    result = (f'<a href="/{escape(out)}">result</a>'
              if record.get(Field.STATUS) == TaskStatus.COMPLETE and out.startswith('tasks/out/') else '')
    cells = [
        f'<span class="status {escape(record.get("status", ""))}">{escape(record.get("status", ""))}</span>',
        escape(task_id), escape(record.get(Field.SERVICE, '')), escape(record.get(Field.CLIENT, '')),
        time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ctime)),
        f'{end - ctime:.1f} s',
        human_size(record.get(Field.SIZE_IN)), human_size(record.get(Field.SIZE_OUT)),
        f'{result} <a href="/tasks/log/{escape(task_id)}">log</a>',
        escape(record.get(Field.ERROR, '')),
    ]
    return '<tr>' + ''.join(f'<td>{c}</td>' for c in cells) + '</tr>\n'


def human_size(size):
    """``45 B``, ``1.8 KB``, ``1.8 MB`` (units of 1024), '' when not known."""
    try:
        value = int(size)
    except (TypeError, ValueError):
        return ''
    if value < 1024:
        return f'{value} B'
    unit = 'KB'
    value /= 1024
    for bigger in ('MB', 'GB'):
        if value < 1024:
            break
        unit, value = bigger, value / 1024
    return f'{value:.1f} {unit}'
