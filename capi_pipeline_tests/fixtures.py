"""Landing files built from the real Shopify sample, moved into the sending window.

The valmi capture (../shared/data/upstream/shopify_pixel_valmi) is from January 2024, older
than Pinterest accepts. These helpers shift every time by whole days so the capture's first
day becomes a chosen day, keep every other byte as captured, and add the few derived lines
the sample lacks, each marked in its comments.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
VALMI = SHARED / "data" / "upstream" / "shopify_pixel_valmi"
SAMPLE_FIRST_DAY = date(2024, 1, 12)
MISSING_SHARED = "../shared/data/upstream is not beside the repository (CI lays it there)"
EPIK = "dj0yJnU9bGFuZGluZyZwPTAmbj1kZW1vJnQ9MTcwNDk5OTk5OQ"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SAM_EMAIL = "sam@example.com"


def shift_iso(text: str, days: int) -> str:
    """An ISO timestamp moved by whole days, in its own format and offset."""
    moved = datetime.fromisoformat(text.replace("Z", "+00:00")) + timedelta(days=days)
    out = moved.isoformat(timespec="milliseconds" if "." in text else "seconds")
    return out.replace("+00:00", "Z") if text.endswith("Z") else out


def pixel_events(day: date) -> list[dict]:
    """The 13 real pixel events, the capture's first day moved to `day`."""
    days = (day - SAMPLE_FIRST_DAY).days
    events = []
    for line in (VALMI / "pixel_events.ndjson").read_text().splitlines():
        event = json.loads(line)
        event["timestamp"] = shift_iso(event["timestamp"], days)
        events.append(event)
    return events


def write_valmi_landing(landing: Path, day: date) -> dict[str, object]:
    """Land the shifted sample as a collector would, plus derived lines; returns what it wrote.

    Derived, not captured: the first page view lands from a Pinterest ad (an `epik` in its
    URL), the events arrive in our collector envelope with a documentation-range IP, one
    Googlebot visit, one exact duplicate line and one truncated line.
    """
    events = pixel_events(day)
    first = events[0]
    location = first["context"]["document"]["location"]
    location["href"] += f"?epik={EPIK}&utm_source=pinterest"
    location["search"] = f"?epik={EPIK}&utm_source=pinterest"

    lines = []
    for event in events:
        lines.append(json.dumps({
            "received_at": shift_iso(event["timestamp"], 0),
            "ip": "203.0.113.43",
            "user_agent": event["context"]["navigator"]["userAgent"],
            "body": event,
        }))
    bot = json.loads(json.dumps(events[0]))
    bot["id"] = "sh-bot-0001"
    bot["clientId"] = "bot-client-0001"
    bot["context"]["navigator"]["userAgent"] = GOOGLEBOT
    lines.append(json.dumps({"received_at": bot["timestamp"], "ip": "198.51.100.7",
                             "user_agent": GOOGLEBOT, "body": bot}))
    lines.append(lines[3])
    lines.append(lines[4][: len(lines[4]) // 2])

    folder = landing / "pixel" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.ndjson").write_text("\n".join(lines) + "\n")
    on_day = [event for event in events if event["timestamp"].startswith(day.isoformat())]
    return {"events_on_day": len(on_day), "lines": len(lines), "events": events}
