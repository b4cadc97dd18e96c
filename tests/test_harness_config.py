"""graceful.harness.settings and .templates: the ``[tool.graceful.harness]`` table, the flags
over it, the write/read templates; no engine needed.

The loader and the template parser take hostile input (NUL bytes, huge strings, nested
tables, wrong types): each either gives a value the harness can use or a ``ValueError`` that
names the key (and the file), never another exception (hypothesis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.exceptions import ConfigError
from graceful.harness import cli
from graceful.harness.load import LoadClient
from graceful.harness.settings import KEYS, find_pyproject, load, read_table
from graceful.harness.templates import MAX_TEMPLATE_CHARS, RequestTemplate, TemplateError
from graceful.harness.workload import Workload
from tests.harness_servers import serve

ROOT = Path(__file__).resolve().parent.parent
CHAOS_FILE = "# test_chaos.py -- run with: pytest (the image"
CONFTEST = "# conftest.py: a shorter stop timeout"


def doc_block(path: Path, first_line: str) -> str:
    """The fenced Python block of ``path`` that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


FASTAPI_TABLE = """\
[project]
name = "orders-api"

[tool.graceful.harness]
image = "orders-api:dev"
admin_port = "off"
ready_path = "/health"
work_url = "/slow?s={seconds}"
stream_path = "/events"
write = 'POST /orders {"id": "{id}", "qty": 1}'
read = "GET /orders/{id}"
stop_timeout = 5
env = { LOG_LEVEL = "info", WORKERS = 2 }
"""


def write_table(directory: Path, text: str) -> Path:
    path = directory / "pyproject.toml"
    path.write_text(text)
    return path


# -- the table --------------------------------------------------------------------------------


def test_the_table_describes_the_app(tmp_path: Path) -> None:
    source = write_table(tmp_path, FASTAPI_TABLE)
    config = load({}, start=tmp_path)
    w = config.workload
    assert config.source == source
    assert (config.image, config.stop_timeout) == ("orders-api:dev", 5)
    assert (w.admin_port, w.ready_on, w.readiness_path) == (None, "main", "/health")
    assert w.work_target(2000) == "/slow?s=2"
    assert w.stream_path == "/events"
    assert w.has_items
    assert w.items_path == ""
    assert dict(config.env) == {"LOG_LEVEL": "info", "WORKERS": "2"}
    settings_ = config.settings()
    assert settings_.stop_timeout == 5
    assert settings_.workload == w


def test_found_from_the_current_directory_upwards_nearest_table_first(tmp_path: Path) -> None:
    write_table(tmp_path, FASTAPI_TABLE)
    below = tmp_path / "service" / "src"
    below.mkdir(parents=True)
    # A pyproject.toml without the table (a sub-package's) does not hide the one above.
    write_table(tmp_path / "service", '[project]\nname = "graceful-thing"\n')
    assert find_pyproject(below) == tmp_path / "pyproject.toml"
    nearer = write_table(below, '[tool.graceful.harness]\nimage = "near"\n')
    assert find_pyproject(below) == nearer
    assert load({}, start=below).image == "near"


def test_flag_beats_table_beats_default(tmp_path: Path) -> None:
    write_table(tmp_path, FASTAPI_TABLE)
    config = load({"port": 9000, "admin_port": "9091", "stop_timeout": None}, start=tmp_path)
    assert config.workload.port == 9000  # flag
    assert config.workload.admin_port == 9091  # flag over the table's "off"
    assert config.stop_timeout == 5  # table (the flag was not given)
    assert config.startup_timeout == 60.0  # default
    assert load({}, start=Path("/")).workload == Workload()  # no table anywhere: defaults
    more = load({"env": ["ORDERS_STORE=memory", "WORKERS=4"]}, start=tmp_path)
    assert dict(more.env) == {"LOG_LEVEL": "info", "WORKERS": "4", "ORDERS_STORE": "memory"}


def test_a_flag_for_the_writes_replaces_the_tables_templates(tmp_path: Path) -> None:
    """items_path, write and read describe one thing: --items-path /items alone replaces
    the table's templates instead of colliding with them."""
    write_table(tmp_path, FASTAPI_TABLE)
    config = load({"items_path": "/items"}, start=tmp_path)
    assert (config.workload.items_path, config.workload.write) == ("/items", "")
    work = load({"work_path": "/w"}, start=tmp_path)
    assert work.workload.work_target(5) == "/w?ms=5"


def test_relative_build_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    write_table(tmp_path, '[tool.graceful.harness]\nbuild = "."\ndockerfile = "Dockerfile"\n')
    (tmp_path / "sub").mkdir()
    config = load({}, start=tmp_path / "sub")
    assert config.build == str(tmp_path.resolve())
    assert config.dockerfile == "Dockerfile"
    assert load({"build": "ctx"}, start=tmp_path).build == "ctx"  # a flag: as given


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('wokr_url = "/w?ms={ms}"', "wokr_url: unknown key (did you mean work_url?)"),
        ("zzz = 1", "zzz: unknown key; known: image"),
        ('"x\\u0000" = 1', "'x\\x00': unknown key"),
        ('port = "8080"', "port: expected an integer, not text ('8080')"),
        ("port = 8080.0", "port: expected an integer, not 8080.0"),
        ("port = true", "port: expected an integer, not a boolean (True)"),
        ("port = 70000", "port: 70000 is out of range (1 to 65535)"),
        ("stop_timeout = 0", "stop_timeout: 0 is out of range"),
        ("admin_port = 0", "admin_port: admin port 0 means a port picked at random"),
        ('admin_port = "nine"', "admin_port: 'nine' is not a port number (or off)"),
        ("admin_port = [9090]", 'admin_port: expected a port number or "off", not an array'),
        ("init = 1", "init: expected true or false, not an integer (1)"),
        ('image = "a\\u0000b"', "image: holds a NUL character"),
        ("image = { name = 'x' }", "image: expected text, not a table"),
        ("env = { A = { B = 'c' } }", "env: 'A': expected text, not a table"),
        ('env = "A=1"', "env: expected a table of names to text, not text"),
        ("scenarios = 'stop-idle'", "scenarios: expected a list of names, not text"),
        ("[tool.graceful.harness.nested]\nx = 1", "nested: unknown key"),
    ],
)
def test_a_bad_key_fails_naming_the_file_and_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    source = write_table(tmp_path, f"[tool.graceful.harness]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load({}, start=tmp_path)
    assert str(caught.value).startswith(f"{source}: [tool.graceful.harness] "), caught.value
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("table", "flags", "message"),
    [
        ('work_url = "/slow"', {}, "[tool.graceful.harness] work_url: work URL '/slow' must hold"),
        ('stream_path = "events"', {}, "stream_path: 'events' must start with /"),
        ('write = "POST /orders"', {}, "write: write template 'POST /orders': no {id}"),
        ('write = \'POST /o {"id": "{id}"}\'', {}, "write: read is missing"),
        (
            'items_path = "/items"\nwrite = "POST /o/{id}"\nread = "GET /o/{id}"',
            {},
            "give items_path, or write and read",
        ),
        ('work_url = "/w?ms={ms}"\nwork_path = "/w"', {}, "give one of work_url and work_path"),
        ('ready_path = "admin:/readyz"\nadmin_port = "off"', {}, "there is no admin port"),
        ("", {"write": "GET /o"}, "--write: write template 'GET /o': no {id}"),
        ("", {"port": "http"}, "--port: expected an integer, not 'http'"),
        ("", {"read": "GET /o/{id}"}, "--read: write is missing"),
    ],
)
def test_a_value_the_harness_cannot_use_names_where_it_came_from(
    tmp_path: Path, table: str, flags: dict[str, Any], message: str
) -> None:
    source = write_table(tmp_path, f"[tool.graceful.harness]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load(flags, start=tmp_path)
    text = str(caught.value)
    assert message in text
    if not flags:
        assert str(source) in text


def test_a_named_config_must_hold_the_table(tmp_path: Path) -> None:
    empty = write_table(tmp_path, "[project]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"no \[tool.graceful.harness\] table"):
        load({}, config=empty)
    broken = tmp_path / "broken.toml"
    broken.write_text("[tool.graceful.harness\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({}, config=broken)
    with pytest.raises(ConfigError, match="cannot be read"):
        load({}, config=tmp_path / "missing.toml")


# -- the CLI and the plugin read the same table -------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["run", *argv])


def test_harness_run_reads_the_table_and_its_flags_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_table(tmp_path, FASTAPI_TABLE + 'scenarios = ["kill-under-load"]\n')
    monkeypatch.chdir(tmp_path)
    config = cli._config(parse())
    assert config.image == "orders-api:dev"
    assert config.scenarios == ("kill-under-load",)
    assert config.workload.write.startswith("POST /orders")
    flagged = cli._config(parse("--image", "other", "--stream-path", "", "--scenario", "a,b"))
    assert (flagged.image, flagged.workload.stream_path) == ("other", "")
    assert flagged.scenarios == ("a", "b")
    elsewhere = tmp_path / "ci.toml"
    elsewhere.write_text('[tool.graceful.harness]\nimage = "from-config"\n')
    assert cli._config(parse("--config", str(elsewhere))).image == "from-config"


def test_harness_run_fails_at_startup_on_a_bad_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_table(tmp_path, '[tool.graceful.harness]\nwokr_url = "/w?ms={ms}"\n')
    monkeypatch.chdir(tmp_path)
    assert cli.main(parse("--image", "x")) == 2
    err = capsys.readouterr().err
    assert (
        f"{source}: [tool.graceful.harness] wokr_url: unknown key (did you mean work_url?)" in err
    )
    # Control: no image anywhere is its own message, naming both ways to give one.
    write_table(tmp_path, "[tool.graceful.harness]\n")
    assert cli.main(parse()) == 2
    assert "image (or build) in [tool.graceful.harness]" in capsys.readouterr().err


PLUGIN_TEST = """
def test_settings(graceful_settings, graceful_config):
    w = graceful_settings.workload
    print("SEEN", graceful_config.image, w.port, w.write, w.read, w.admin_port,
          graceful_settings.stop_timeout, w.ready_path, w.work_url, w.stream_path)
"""


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRACEFUL_IMAGE"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_plugin_reads_the_rootdir_table_and_its_options_override_it(tmp_path: Path) -> None:
    write_table(tmp_path, FASTAPI_TABLE)
    (tmp_path / "test_settings.py").write_text(PLUGIN_TEST)
    plain = run_pytest(tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert (
        'SEEN orders-api:dev 8080 POST /orders {"id": "{id}", "qty": 1} GET /orders/{id} None 5 '
        "/health /slow?s={seconds} /events"
    ) in plain.stdout
    options = run_pytest(
        tmp_path,
        "--graceful-image=img:2",
        "--graceful-port=9000",
        "--graceful-work-url=/work?ms={ms}",
        "--graceful-stream-path=",
        "--graceful-ready-path=/ready",
        "--graceful-admin-port=9091",
        "--graceful-write=PUT /o/{id}",
        "--graceful-read=GET /o/{id}",
        "--graceful-stop-timeout=3",
    )
    assert options.returncode == 0, options.stdout + options.stderr
    assert "SEEN img:2 9000 PUT /o/{id} GET /o/{id} 9091 3 /ready /work?ms={ms} " in options.stdout


def test_the_docs_conftest_overrides_the_settings(tmp_path: Path) -> None:
    """The docs' real example of overriding graceful_settings, run as written."""
    write_table(tmp_path, FASTAPI_TABLE)
    (tmp_path / "test_settings.py").write_text(
        PLUGIN_TEST + "    print('ENV', dict(graceful_settings.env))\n"
    )
    (tmp_path / "conftest.py").write_text(doc_block(ROOT / "docs" / "harness.md", CONFTEST))
    out = run_pytest(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 3 /health " in out.stdout  # stop_timeout 3 over the table's 5
    assert "ENV {'LOG_LEVEL': 'debug', 'WORKERS': '2'}" in out.stdout


def readme_table() -> str:
    """The README's ``[tool.graceful.harness]`` example (tests/test_harness_config_docker.py
    runs it against the app it describes)."""
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith("[tool.graceful.harness]")]
    return block


def test_the_readme_and_the_docs_show_the_same_table_and_chaos_tests() -> None:
    """tests/test_harness_config_docker.py runs the docs' file and the README's table; the
    README and the docs show the same ones."""
    docs = doc_block(ROOT / "docs" / "harness.md", CHAOS_FILE)
    assert doc_block(ROOT / "README.md", CHAOS_FILE) == docs
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "harness.md").read_text(), re.S)
    assert "# pyproject.toml\n" + readme_table() in blocks
    assert tomllib.loads(readme_table())["tool"]["graceful"]["harness"]["image"] == "orders-api:dev"


def test_the_plugin_fails_at_startup_on_a_bad_table_or_option(tmp_path: Path) -> None:
    source = write_table(tmp_path, '[tool.graceful.harness]\nwokr_url = "/w?ms={ms}"\n')
    (tmp_path / "test_settings.py").write_text(PLUGIN_TEST)
    bad = run_pytest(tmp_path)
    assert bad.returncode == 4, bad.stdout + bad.stderr  # a usage error: nothing ran
    assert f"{source}: [tool.graceful.harness] wokr_url: unknown key (did you mean work_url?)" in (
        bad.stderr
    )
    write_table(tmp_path, FASTAPI_TABLE)
    option = run_pytest(tmp_path, "--graceful-write=POST /orders")
    assert option.returncode == 4
    assert "--graceful-write: write template 'POST /orders': no {id} in it" in option.stderr
    # Control: the same run with a good table and options passes.
    assert run_pytest(tmp_path).returncode == 0


# -- templates --------------------------------------------------------------------------------


def test_templates_put_the_id_where_it_belongs() -> None:
    write = RequestTemplate.parse('post /orders {"id": "{id}", "note": "x {id}"}')
    assert (write.method, write.path) == ("POST", "/orders")
    body = json.loads(write.body_for('a"b\\c'))
    assert body == {"id": 'a"b\\c', "note": 'x a"b\\c'}
    read = RequestTemplate.parse("GET /orders/{id}?full=1")
    assert read.target_for("a/b c?") == "/orders/a%2Fb%20c%3F?full=1"
    assert read.body_for("x") == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected METHOD /path"),
        ("/orders/{id}", "expected METHOD /path"),
        ("FETCH /orders/{id}", "'FETCH' is not a method"),
        ("GET orders/{id}", "must start with /"),
        ("GET /orders", "no {id} in it"),
        ("GET /orders/{id}/{x}", "holds {x}; only {id}"),
        ('POST /orders {"id": {id}}', "not valid JSON once {id} is replaced"),
        ('POST /orders/{id} {"a": ', "not valid JSON"),
        ('POST /orders {"id": "{id}", "n": NaN}', "not valid JSON"),
        ("GET /o/{id}\x00", "control character"),
        ("GET /" + "x" * MAX_TEMPLATE_CHARS + "{id}", "more than 8192"),
    ],
)
def test_a_template_that_cannot_be_sent_is_refused(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        RequestTemplate.parse(text, what="--write")
    assert str(caught.value).startswith("--write")
    assert message in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_template_or_a_template_error(text: str) -> None:
    try:
        template = RequestTemplate.parse(text)
    except TemplateError:
        return
    rendered = template.target_for("id-1") + template.body_for("id-1")
    assert "id-1" in rendered
    if template.body:
        json.loads(template.body_for("id-1"))


ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=50)


@settings(max_examples=200, deadline=None)
@given(ids, st.sampled_from(["{id}", "{id}-x", "pre-{id}"]))
def test_any_id_round_trips_through_body_and_path(item_id: str, field: str) -> None:
    template = RequestTemplate.parse(f'PUT /o/{field} {{"id": "{field}", "n": [1, "{field}"]}}')
    expected = field.replace("{id}", item_id)
    assert json.loads(template.body_for(item_id)) == {"id": expected, "n": [1, expected]}
    from urllib.parse import unquote

    assert unquote(template.target_for(item_id)) == f"/o/{expected}"


# -- the table loader under hostile input ------------------------------------------------------

toml_scalars = st.one_of(
    st.text(max_size=50),
    st.text(alphabet="\x00ab", max_size=5),
    # Around the 8192-character limit: "/" * 8192 is a path, one more is refused.
    st.builds(lambda n, c: c * n, st.integers(8190, 8194), st.sampled_from(["/", "a", "\x00"])),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*KEYS, "wokr_url", "", "x\x00"]), toml_values, max_size=4))
def test_any_table_loads_or_fails_naming_the_key(table: dict[str, Any]) -> None:
    from graceful.harness.settings import check_value, resolve

    checked: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            continue
        try:
            checked[key] = check_value(key, value)
        except ValueError:
            return  # read_table names the file and the key; see the parametrized test
    try:
        config = resolve({}, checked, Path("pyproject.toml"))
    except ConfigError as exc:
        message = str(exc)
    else:
        assert isinstance(config.workload, Workload)
        return
    assert "pyproject.toml: [tool.graceful.harness]" in message or "the defaults" in message


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["image", "work_url", "write", "env", "port"]))
def test_any_toml_text_loads_or_fails_naming_the_file(text: str, key: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pyproject.toml"
        # JSON's string escapes are TOML's (a lone surrogate is not valid TOML: refused).
        path.write_text(f"[tool.graceful.harness]\n{key} = {json.dumps(text)}\n", "utf-8")
        try:
            load({}, config=path)
        except ConfigError as exc:
            message = str(exc)
        else:
            return
    assert message.startswith(str(path))


def test_huge_and_nested_tables_are_refused_with_the_key(tmp_path: Path) -> None:
    huge = "/" + "x" * 100_000
    source = write_table(tmp_path, f'[tool.graceful.harness]\nstream_path = "{huge}"\n')
    with pytest.raises(ConfigError, match="stream_path: 100001 characters, more than 8192"):
        read_table(source)
    deep = "[tool.graceful.harness]\nenv = " + "{a = " * 50 + "1" + "}" * 50 + "\n"
    write_table(tmp_path, deep)
    with pytest.raises(ConfigError, match="env: 'a': expected text, not a table"):
        read_table(source)


# -- the read template, against a real server ---------------------------------------------------


async def test_a_read_answers_stored_on_2xx_not_on_404_and_raises_otherwise() -> None:
    import httpx

    stored = {"a", "b"}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = head.split(" ", 2)[1]
        item = target.rsplit("/", 1)[1]
        status = 500 if item == "boom" else 200 if item in stored else 404
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    workload = Workload(write='POST /o {"id": "{id}"}', read="GET /o/{id}")
    async with server, LoadClient(port, workload=workload) as client:
        assert await client.stored_ids(["a", "b", "c"]) == {"a", "b"}
        assert await client.stored_ids([]) == set()  # one read of an id never written
        with pytest.raises(httpx.HTTPStatusError):
            await client.stored_ids(["a", "boom"])
        with pytest.raises(ValueError, match="name the ids"):
            await client.stored_ids()


async def test_the_preflight_refuses_a_read_that_finds_every_id() -> None:
    """A read answering 200 for any id would find every lost write too: not established.
    Control: a read that answers 404 for what was never written is."""
    from graceful.harness.preflight import _check_read

    async def always_200(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def honest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status = 404 if "never-written" in head.split("\r\n", 1)[0] else 200
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)
        await writer.drain()
        writer.close()

    workload = Workload(write='POST /o {"id": "{id}"}', read="GET /o/{id}")
    results = []
    for handler in (always_200, honest):
        server, port = await serve(handler)
        async with server, LoadClient(port, workload=workload) as client:
            results.append(await _check_read(client, workload, "run-preflight"))
    liar, control = results
    assert not liar.established
    assert "answered 2xx for an id never written (run-preflight-never-written)" in liar.detail
    assert control.established, control.detail
