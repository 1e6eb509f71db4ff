"""proxy.config: defaults, file, environment and overrides in that order; secrets stay hidden."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from proxy.config import Config, ConfigError, Secret, default_routes_dir, load

ADMIN = "adm-7f3a9c1e-super-secret"


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchyard.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load(env={})
    assert config.host == "127.0.0.1"
    assert config.port == 8080
    assert config.demo is None
    assert config.admin_key is None
    assert config.public_base_url is None
    assert config.max_body_bytes == 64 * 1024 * 1024
    assert config.image_url_ttl_s == 3600
    assert config.request_timeout_s == 300.0
    assert config.simulation_time_scale == 1.0
    assert config.access_log is False
    assert config.routes_dir == default_routes_dir()
    assert config.database_path == config.data_dir / "switchyard.db"


def test_default_routes_dir_holds_the_demo() -> None:
    assert (default_routes_dir() / "demo" / "providers.toml").is_file()


def test_file_values(tmp_path: Path) -> None:
    path = _file(tmp_path, f"""
host = "0.0.0.0"
port = 9000
data_dir = "{tmp_path / 'data'}"
demo = true
admin_key = "{ADMIN}"
public_base_url = "https://images.example.com/"
max_body_bytes = 1024
image_url_ttl_s = 60
request_timeout_s = 12.5
simulation_time_scale = 0
access_log = true
""")
    config = load(path, env={})
    assert (config.host, config.port) == ("0.0.0.0", 9000)
    assert config.data_dir == tmp_path / "data"
    assert config.database_path == tmp_path / "data" / "switchyard.db"
    assert config.demo is True
    assert config.admin_key is not None and config.admin_key.reveal() == ADMIN
    assert config.public_base_url == "https://images.example.com"
    assert (config.max_body_bytes, config.image_url_ttl_s) == (1024, 60)
    assert (config.request_timeout_s, config.simulation_time_scale) == (12.5, 0.0)
    assert config.access_log is True


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = _file(tmp_path, "port = 9001\n")
    assert load(env={"SWITCHYARD_CONFIG": str(path)}).port == 9001


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = _file(tmp_path, 'port = 9000\nhost = "0.0.0.0"\ndemo = true\n')
    config = load(path, env={"SWITCHYARD_PORT": "9100", "SWITCHYARD_DEMO": "off"})
    assert config.port == 9100
    assert config.demo is False
    assert config.host == "0.0.0.0"  # not in the environment: the file's value stays


def test_explicit_overrides_beat_environment(tmp_path: Path) -> None:
    path = _file(tmp_path, "port = 9000\n")
    env = {"SWITCHYARD_PORT": "9100", "SWITCHYARD_DATA_DIR": str(tmp_path / "env")}
    config = load(path, env=env, port=9200, data_dir=tmp_path / "flag")
    assert config.port == 9200
    assert config.data_dir == tmp_path / "flag"


def test_none_overrides_are_ignored() -> None:
    config = load(env={"SWITCHYARD_PORT": "9100", "SWITCHYARD_HOST": "::1"}, port=None, host=None)
    assert (config.port, config.host) == (9100, "::1")


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False),
    ("", None), ("auto", None),
])
def test_demo_values(text: str, expected: bool | None) -> None:
    assert load(env={"SWITCHYARD_DEMO": text}).demo is expected


def test_empty_admin_key_means_none() -> None:
    assert load(env={"SWITCHYARD_ADMIN_KEY": ""}).admin_key is None


@pytest.mark.parametrize(("var", "value", "setting"), [
    ("SWITCHYARD_PORT", "http", "port"),
    ("SWITCHYARD_PORT", "0", "port"),
    ("SWITCHYARD_PORT", "-80", "port"),
    ("SWITCHYARD_PORT", "80.5", "port"),
    ("SWITCHYARD_MAX_BODY_BYTES", "0", "max_body_bytes"),
    ("SWITCHYARD_IMAGE_URL_TTL_S", "1h", "image_url_ttl_s"),
    ("SWITCHYARD_REQUEST_TIMEOUT_S", "-1", "request_timeout_s"),
    ("SWITCHYARD_REQUEST_TIMEOUT_S", "soon", "request_timeout_s"),
    ("SWITCHYARD_SIMULATION_TIME_SCALE", "-0.5", "simulation_time_scale"),
    ("SWITCHYARD_DEMO", "maybe", "demo"),
    ("SWITCHYARD_ACCESS_LOG", "loud", "access_log"),
])
def test_bad_environment_values_name_the_setting(var: str, value: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"'{setting}'"):
        load(env={var: value})


@pytest.mark.parametrize(("line", "setting"), [
    ('port = "eighty"', "port"),
    ("port = true", "port"),
    ("max_body_bytes = -5", "max_body_bytes"),
    ('demo = "sometimes"', "demo"),
])
def test_bad_file_values_name_the_setting(tmp_path: Path, line: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"'{setting}'"):
        load(_file(tmp_path, line + "\n"), env={})


def test_bad_override_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="'port'"):
        load(env={}, port="eighty")


@pytest.mark.parametrize("value", ["auto", ""])
def test_access_log_has_no_auto(value: str) -> None:
    with pytest.raises(ConfigError, match="'access_log'"):
        load(env={"SWITCHYARD_ACCESS_LOG": value})


def test_port_above_65535_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'port'"):
        load(env={"SWITCHYARD_PORT": "70000"})


def test_unknown_file_setting_raises(tmp_path: Path) -> None:
    path = _file(tmp_path, 'port = 9000\nlisten_adress = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="listen_adress"):
        load(path, env={})


@pytest.mark.parametrize("text", [None, "port = \n"])
def test_unreadable_file_raises(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "switchyard.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load(path, env={})


def test_repr_never_shows_the_admin_key(tmp_path: Path) -> None:
    for config in (load(env={"SWITCHYARD_ADMIN_KEY": ADMIN}),
                   load(_file(tmp_path, f'admin_key = "{ADMIN}"\n'), env={}),
                   load(env={}, admin_key=ADMIN)):
        assert config.admin_key is not None and config.admin_key.reveal() == ADMIN
        for text in (repr(config), str(config), repr(config.admin_key), str(config.admin_key)):
            assert ADMIN not in text
        assert "admin_key=Secret('********')" in repr(config)


def test_secret_reveals_only_on_request() -> None:
    secret = Secret(ADMIN)
    assert secret.reveal() == ADMIN
    assert f"{secret}" == "Secret('********')"
    assert ADMIN not in repr([secret])


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_fleet_mode_needs_postgresql_and_keeps_redis_password_secret() -> None:
    redis = "redis://:hunter2@10.0.0.5:6379/0"
    with pytest.raises(ConfigError, match="needs a PostgreSQL database_url"):
        load(env={"SWITCHYARD_REDIS_URL": redis})
    with pytest.raises(ConfigError, match="needs a PostgreSQL database_url"):
        load(env={"SWITCHYARD_REDIS_URL": redis, "SWITCHYARD_DATABASE_URL": "/tmp/x.db"})
    with pytest.raises(ConfigError, match="redis_url' must start with redis://"):
        load(env={"SWITCHYARD_REDIS_URL": "10.0.0.5:6379",
                  "SWITCHYARD_DATABASE_URL": "postgresql://db/switchyard"})
    config = load(env={"SWITCHYARD_REDIS_URL": redis, "SWITCHYARD_REDIS_PREFIX": "blue",
                       "SWITCHYARD_DATABASE_URL": "postgresql://db/switchyard"})
    assert config.fleet and config.redis_prefix == "blue"
    assert config.redis_url is not None and config.redis_url.reveal() == redis
    assert "hunter2" not in repr(config)
    assert not load(env={}).fleet


def test_callback_allow_cidrs_from_file_and_environment(tmp_path: Path) -> None:
    assert load(env={}).callback_allow_cidrs == ()  # a fresh install: public receivers only
    path = _file(tmp_path, 'callback_allow_cidrs = ["10.0.0.0/8", "::1/128"]\n')
    assert load(path, env={}).callback_allow_cidrs == (ipaddress.ip_network("10.0.0.0/8"),
                                                       ipaddress.ip_network("::1/128"))
    env = {"SWITCHYARD_CALLBACK_ALLOW_CIDRS": "127.0.0.0/8, 192.168.0.0/16"}
    assert load(path, env=env).callback_allow_cidrs == (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16"))


@pytest.mark.parametrize("value", ["10.0.0.1/8", "localhost", "10.0.0.0/8,nope"])
def test_a_bad_callback_allow_list_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="'callback_allow_cidrs'"):
        load(env={"SWITCHYARD_CALLBACK_ALLOW_CIDRS": value})


def test_slow_client_limits_default_and_come_from_the_environment() -> None:
    config = load(env={})
    assert (config.keep_alive_timeout_s, config.header_timeout_s, config.body_timeout_s,
            config.max_header_bytes) == (5.0, 10.0, 30.0, 65536)
    config = load(env={"SWITCHYARD_KEEP_ALIVE_TIMEOUT_S": "75", "SWITCHYARD_HEADER_TIMEOUT_S":
                       "2.5", "SWITCHYARD_BODY_TIMEOUT_S": "60",
                       "SWITCHYARD_MAX_HEADER_BYTES": "16384"})
    assert (config.keep_alive_timeout_s, config.header_timeout_s, config.body_timeout_s,
            config.max_header_bytes) == (75.0, 2.5, 60.0, 16384)


@pytest.mark.parametrize("setting", ["keep_alive_timeout_s", "header_timeout_s",
                                     "body_timeout_s", "max_header_bytes"])
@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_slow_client_limits_must_be_positive_and_finite(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"'{setting}'"):
        load(env={f"SWITCHYARD_{setting.upper()}": value})


def test_metrics_token_is_secret_and_long_enough(tmp_path: Path) -> None:
    token = "mtk-0123456789abcdef"
    for config in (load(env={"SWITCHYARD_METRICS_TOKEN": token}),
                   load(_file(tmp_path, f'metrics_token = "{token}"\n'), env={})):
        assert config.metrics_token is not None and config.metrics_token.reveal() == token
        assert token not in repr(config) and token not in str(config)
    assert load(env={"SWITCHYARD_METRICS_TOKEN": ""}).metrics_token is None
    with pytest.raises(ConfigError, match="'metrics_token' must be at least 16 characters"):
        load(env={"SWITCHYARD_METRICS_TOKEN": "short"})


def test_max_queued_per_key_defaults_and_comes_from_file_or_environment(
        tmp_path: Path) -> None:
    assert load(env={}).max_queued_per_key == 100_000
    assert load(_file(tmp_path, "max_queued_per_key = 500\n"), env={}).max_queued_per_key == 500
    assert load(env={"SWITCHYARD_MAX_QUEUED_PER_KEY": "20"}).max_queued_per_key == 20
    for value in ("0", "-5", "many", "1.5"):
        with pytest.raises(ConfigError, match="'max_queued_per_key'"):
            load(env={"SWITCHYARD_MAX_QUEUED_PER_KEY": value})
