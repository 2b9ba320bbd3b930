"""Where events go: one Pinterest ad account, or one per store from a destinations file.

Without a file, every event goes to the ad account of PINTEREST_AD_ACCOUNT_ID. With
CAPI_DESTINATIONS_FILE naming a TOML file, each `[[destination]]` routes the stores it lists to
its own ad account and token::

    [[destination]]
    name = "us"                          # the ledger's and match rate's name for it
    ad_account_id = "549755813599"
    token_env = "PINTEREST_TOKEN_US"     # the token is read from this variable, never the file
    stores = ["shop.example.com", "shop-us.myshopify.com"]

    [[destination]]
    name = "eu"
    ad_account_id = "549755813600"
    token_env = "PINTEREST_TOKEN_EU"
    stores = ["*"]                       # every store no other destination names

A store is the host an event was seen on (the storefront's domain) or, for webhooks, the
shop domain the collector recorded. `base_url` and `test_mode` may be set per destination.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CATCH_ALL = "*"


class DestinationsError(ValueError):
    """A destinations file that cannot be used, with what to fix."""


@dataclass(frozen=True)
class Destination:
    """One ad account that events are sent to."""

    name: str
    base_url: str
    ad_account_id: str
    token_env: str
    stores: tuple[str, ...]
    test_mode: bool = False
    access_token: str | None = field(default=None, repr=False)

    @property
    def ledger_name(self) -> str:
        """The name in the ledger; test sends keep a ledger of their own."""
        return f"{self.name}:test" if self.test_mode else self.name

    def token(self) -> str:
        """The access token, read from the environment at the moment it is needed."""
        value = self.access_token or os.environ.get(self.token_env)
        if not value:
            raise DestinationsError(
                f"destination {self.name!r}: set the environment variable {self.token_env} to "
                "its Pinterest conversion access token"
            )
        return value


def load_destinations(path: Path, default_base_url: str, test_mode: bool) -> list[Destination]:
    """The destinations a TOML file describes, checked for what would misroute events."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise DestinationsError(f"cannot read destinations file {path}: {error}") from None
    entries = document.get("destination")
    if not isinstance(entries, list) or not entries:
        raise DestinationsError(f"{path} holds no [[destination]] tables")

    destinations = []
    for number, entry in enumerate(entries, 1):
        missing = [key for key in ("name", "ad_account_id", "token_env", "stores")
                   if not entry.get(key)]
        if missing:
            raise DestinationsError(f"{path}: destination {number} lacks {', '.join(missing)}")
        account = str(entry["ad_account_id"])
        if not account.isdigit() or len(account) > 18:
            raise DestinationsError(f"{path}: destination {entry['name']!r}: ad_account_id "
                                    "must be digits")
        destinations.append(Destination(
            name=str(entry["name"]),
            base_url=str(entry.get("base_url") or default_base_url),
            ad_account_id=account,
            token_env=str(entry["token_env"]),
            stores=tuple(str(store).lower() for store in entry["stores"]),
            test_mode=bool(entry.get("test_mode", test_mode)),
        ))
    _check_routes(path, destinations)
    return destinations


def _check_routes(path: Path, destinations: list[Destination]) -> None:
    names = [destination.name for destination in destinations]
    if len(set(names)) != len(names):
        raise DestinationsError(f"{path}: destination names must be unique")
    seen: dict[str, str] = {}
    for destination in destinations:
        for store in destination.stores:
            if store in seen:
                raise DestinationsError(
                    f"{path}: store {store!r} is routed to both {seen[store]!r} and "
                    f"{destination.name!r}; an event must have one destination"
                )
            seen[store] = destination.name


def route(store: str | None, destinations: list[Destination]) -> Destination | None:
    """The destination a store's events go to, or None when no destination takes them."""
    key = (store or "").lower()
    catch_all = None
    for destination in destinations:
        if key and key in destination.stores:
            return destination
        if CATCH_ALL in destination.stores:
            catch_all = destination
    return catch_all


def stores_for(
    destination: Destination, stores: list[str | None], destinations: list[Destination]
) -> list[str]:
    """Which of a partition's stores go to a destination ('' stands for events with none)."""
    return [store or "" for store in stores if route(store, destinations) is destination]
