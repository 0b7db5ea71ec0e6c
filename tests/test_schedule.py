"""Cron validation (the original's 5-field syntax) and next-run computation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fliplet_workers.cron import (
    Schedule,
    default_timezone,
    host_timezone,
    next_run,
    schedule_timezone,
    seconds_until_next,
    validate_cron,
)

LONDON = ZoneInfo("Europe/London")


@pytest.mark.parametrize(
    "expr",
    [
        "*/15 * * * *",
        "* * * * *",
        "0 */2 * * *",
        "0 8 * * *",
        "0 0 * * 0",
        "0 0 * * 7",
        "0 8 * * MON-FRI",
        "0 8 * * mon,wed,fri",
        "30 6 1 JAN,jul *",
        "0-30/10 9-17 * * 1-5",
        "5,10,15 0 1-7 * *",
        "0 0 29 2 *",
        "  0   8  * * *  ",
    ],
)
def test_valid_expressions(expr: str) -> None:
    assert validate_cron(expr) is None


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("61 * * * *", "minute value 61 is out of range 0-59"),
        ("* 24 * * *", "hour value 24 is out of range 0-23"),
        ("* * 0 * *", "day of month value 0 is out of range 1-31"),
        ("* * * 13 *", "month value 13 is out of range 1-12"),
        ("* * * * 8", "day of week value 8 is out of range 0-7"),
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("0 * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
        ("", "the expression is empty"),
        ("*/0 * * * *", "minute step '/0' must be a whole number of at least 1"),
        ("*/x * * * *", "minute step '/x' must be a whole number of at least 1"),
        ("30-10 * * * *", "minute range '30-10' starts after it ends"),
        ("1,,2 * * * *", "minute field '1,,2' has an empty list item"),
        ("* * * FOO *", "month value 'FOO' is neither a number (1-12) nor a name (JAN, FEB"),
        ("* * * * MONDAY", "day of week value 'MONDAY' is neither a number (0-7) nor a name (SUN, MON"),
        ("MON * * * *", "minute value 'MON' is not a number (0-59)"),
        ("0 0 30 2 *", "it never matches a real date"),
        ("0 0 31 4 *", "it never matches a real date"),
    ],
)
def test_invalid_expressions_say_why(expr: str, reason: str) -> None:
    why = validate_cron(expr)
    assert why is not None
    assert why.startswith(reason)


@pytest.mark.parametrize(
    "expr", ["@hourly", "0 0 L * *", "0 0 * * 5#2", "0 0 15W * *", "0 0 ? * *", "H * * * *"]
)
def test_croniter_extensions_the_original_never_knew_are_rejected(expr: str) -> None:
    assert validate_cron(expr) is not None


def test_non_string_is_rejected() -> None:
    assert validate_cron(15) == "expected a text like '*/15 * * * *', got int"


def test_next_run_every_fifteen_minutes_is_strictly_after() -> None:
    start = datetime(2024, 1, 1, 10, 7, 30, tzinfo=UTC)
    assert next_run("*/15 * * * *", start) == datetime(2024, 1, 1, 10, 15, tzinfo=UTC)
    # exactly on a matching minute: the next one, never the same instant
    on_time = datetime(2024, 1, 1, 10, 15, tzinfo=UTC)
    assert next_run("*/15 * * * *", on_time) == datetime(2024, 1, 1, 10, 30, tzinfo=UTC)


def test_next_run_with_day_names_skips_the_weekend() -> None:
    friday_evening = datetime(2024, 1, 5, 18, 0, tzinfo=UTC)  # 5 Jan 2024 is a Friday
    assert next_run("0 8 * * MON-FRI", friday_evening) == datetime(2024, 1, 8, 8, 0, tzinfo=UTC)


def test_next_run_with_month_names_and_sunday_as_seven() -> None:
    assert next_run("0 0 1 JUL *", datetime(2024, 7, 1, 0, 0, tzinfo=UTC)) == datetime(2025, 7, 1, tzinfo=UTC)
    # 7 Jan 2024 is a Sunday
    assert next_run("0 0 * * 7", datetime(2024, 1, 1, tzinfo=UTC)) == datetime(2024, 1, 7, tzinfo=UTC)


def test_restricted_day_of_month_and_day_of_week_are_ored_like_unix_cron() -> None:
    # the 13th, or any Friday: from Monday 1 Jan 2024 the first Friday (5 Jan) comes before the 13th
    assert next_run("0 0 13 * FRI", datetime(2024, 1, 1, tzinfo=UTC)) == datetime(2024, 1, 5, tzinfo=UTC)


def test_leap_day_schedule_waits_for_the_next_leap_year() -> None:
    assert next_run("0 0 29 2 *", datetime(2025, 1, 1, tzinfo=UTC)) == datetime(2028, 2, 29, tzinfo=UTC)


def test_next_run_in_a_time_zone_follows_daylight_saving() -> None:
    # 8am London time: GMT before 31 March 2024, BST (UTC+1) after
    before = next_run("0 8 * * *", datetime(2024, 3, 30, 9, 0, tzinfo=UTC), tz="Europe/London")
    assert before == datetime(2024, 3, 31, 8, 0, tzinfo=LONDON)
    assert before.astimezone(UTC) == datetime(2024, 3, 31, 7, 0, tzinfo=UTC)
    assert before.tzinfo == LONDON


def test_next_run_over_the_spring_forward_gap() -> None:
    # London skips 01:00-02:00 on 31 March 2024: every 15 minutes goes from 00:45 GMT to 02:00 BST
    after = datetime(2024, 3, 31, 0, 50, tzinfo=UTC)
    result = next_run("*/15 * * * *", after, tz="Europe/London")
    assert result.astimezone(UTC) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert (result.hour, result.minute) == (2, 0)


def test_naive_after_is_wall_clock_time_in_the_zone() -> None:
    result = next_run("0 9 * * *", datetime(2024, 6, 1, 8, 30), tz="Europe/London")
    assert result == datetime(2024, 6, 1, 9, 0, tzinfo=LONDON)
    assert result.astimezone(UTC).hour == 8


def test_next_run_rejects_invalid_expression_and_unknown_zone() -> None:
    with pytest.raises(ValueError, match=r"invalid cron expression '61 \* \* \* \*': minute value 61"):
        next_run("61 * * * *", datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        next_run("* * * * *", datetime(2024, 1, 1, tzinfo=UTC), tz="Mars/Olympus")


def test_seconds_until_next() -> None:
    assert seconds_until_next("*/15 * * * *", datetime(2024, 1, 1, 10, 7, 30, tzinfo=UTC)) == 450.0
    assert seconds_until_next("0 0 * * *", datetime(2024, 1, 1, 23, 59, 59, 500000, tzinfo=UTC)) == 0.5


def test_schedule_helper_for_the_foreground_loop() -> None:
    schedule = Schedule("  */10   * * * * ", tz="Europe/London")
    assert schedule.expr == "*/10 * * * *"
    assert repr(schedule) == "Schedule('*/10 * * * *', tz='Europe/London')"
    now = datetime(2024, 7, 1, 12, 3, tzinfo=LONDON)
    assert schedule.next_run(now) == datetime(2024, 7, 1, 12, 10, tzinfo=LONDON)
    assert schedule.seconds_until_next(now) == 420.0
    # a naive "now" is London wall-clock time; the same instant given in UTC waits just as long
    assert schedule.seconds_until_next(datetime(2024, 7, 1, 12, 3)) == 420.0
    assert schedule.seconds_until_next(now.astimezone(UTC)) == 420.0


def test_schedule_loop_never_sleeps_zero_and_walks_forward() -> None:
    schedule = Schedule("0 */6 * * *")
    now = datetime(2024, 1, 1, tzinfo=UTC)
    runs = []
    for _ in range(5):
        wait = schedule.seconds_until_next(now)
        assert wait > 0
        now += timedelta(seconds=wait)
        runs.append(now.hour)
    assert runs == [6, 12, 18, 0, 6]


def test_schedule_rejects_invalid_expression_up_front() -> None:
    with pytest.raises(ValueError, match="expected 5 fields"):
        Schedule("@daily")


# ------------------------------------------------------------------------------------ time zone rule


def test_timezone_rule_config_then_env_then_host(tmp_path: Path) -> None:
    tokyo_env = {"TZ": "Asia/Tokyo"}
    assert host_timezone(tokyo_env) == "Asia/Tokyo"
    assert default_timezone(tokyo_env) == "Asia/Tokyo"  # no FLIPLET_TIMEZONE: the host's local time
    both = {"TZ": "Asia/Tokyo", "FLIPLET_TIMEZONE": "Europe/London"}
    assert default_timezone(both) == "Europe/London"  # FLIPLET_TIMEZONE beats the host
    # the config's own timezone beats both (the fleet passes its settings' zone as the default)
    assert schedule_timezone("America/New_York", default_timezone(both)) == "America/New_York"
    assert schedule_timezone(None, default_timezone(both)) == "Europe/London"


def test_timezone_rule_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIPLET_TIMEZONE", raising=False)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert schedule_timezone(None) == "Asia/Tokyo"
    monkeypatch.setenv("FLIPLET_TIMEZONE", "Europe/Paris")
    assert schedule_timezone(None) == "Europe/Paris"
    assert schedule_timezone("Australia/Sydney") == "Australia/Sydney"


@pytest.mark.parametrize(("tz", "expected"), [
    (":Europe/Rome", "Europe/Rome"),  # glibc's ':' prefix
    ("/usr/share/zoneinfo/America/New_York", "America/New_York"),
    ("JST-9", "UTC"),  # a POSIX rule names no zone: UTC rather than a guess
    ("Not/AZone", "UTC"),
])
def test_host_timezone_from_tz(tz: str, expected: str) -> None:
    assert host_timezone({"TZ": tz}) == expected


def test_host_timezone_from_etc_localtime(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Asia/Kolkata")
    assert host_timezone({}, localtime=str(link)) == "Asia/Kolkata"
    plain = tmp_path / "copy" / "localtime"
    plain.parent.mkdir()
    plain.write_bytes(b"TZif")  # a copied file names no zone: Debian's /etc/timezone does
    (plain.parent / "timezone").write_text("Europe/Berlin\n")
    assert host_timezone({}, localtime=str(plain)) == "Europe/Berlin"
    (plain.parent / "timezone").unlink()
    assert host_timezone({}, localtime=str(plain)) == "UTC"


def test_eight_oclock_in_tokyo_is_eight_oclock_tokyo_time() -> None:
    zone = schedule_timezone(None, default_timezone({"TZ": "Asia/Tokyo"}))
    after = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # 21:00 in Tokyo
    run = next_run("0 8 * * *", after, zone)
    assert (run.hour, run.utcoffset()) == (8, timedelta(hours=9))
    assert run.astimezone(UTC) == datetime(2026, 12, 4, 23, 0, tzinfo=UTC)


def test_fleet_beat_uses_the_same_rule(tmp_path: Path) -> None:
    """The beat's entries: a config's ``timezone`` wins over the fleet's zone, which is
    ``FLIPLET_TIMEZONE`` else the beat host's local time (the settings read it with the shared rule)."""
    from fliplet_workers.fleet.beat import entries_from
    from fliplet_workers.fleet.registry import Registry
    from fliplet_workers.fleet.settings import FleetSettings

    common = ("auth_token: eu--x\ndatasource_id: 1\ndatabase_driver: sqlite\ndatabase_name: a.db\n"
              "query: SELECT 1\nfrequency: '0 8 * * *'\n")
    (tmp_path / "host.yml").write_text(common)
    (tmp_path / "own.yml").write_text(common + "timezone: Europe/London\n")
    scan = Registry(str(tmp_path)).scan()
    assert not scan.invalid

    after = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    for env, host_zone in [({"TZ": "Asia/Tokyo"}, "Asia/Tokyo"),
                           ({"TZ": "Asia/Tokyo", "FLIPLET_TIMEZONE": "America/New_York"}, "America/New_York")]:
        settings = FleetSettings.from_env(env)
        assert settings.timezone == host_zone == schedule_timezone(None, default_timezone(env))
        entries = entries_from(scan, settings.timezone)
        host, own = entries["host:0"]["schedule"], entries["own:0"]["schedule"]
        assert (host.tz, own.tz) == (host_zone, "Europe/London")
        assert host.next_after(after) == next_run("0 8 * * *", after, host_zone)
        assert host.next_after(after).hour == 8 and own.next_after(after).utcoffset() == timedelta(0)
