"""Consent, app and demographic columns that staging reads for enrich to use."""

from capi_pipeline.staging.extract import extract


def _segment(context: dict, traits: dict | None = None) -> dict:
    body = {"type": "track", "event": "Order Completed", "anonymousId": "a-1",
            "messageId": "m-1", "timestamp": "2024-03-01T10:00:00Z", "context": context,
            "traits": traits or {}, "properties": {}}
    return {"body": body, "source_format": "segment", "source_event_name": "Order Completed",
            "source_event_id": "m-1"}


def test_segment_app_event_gives_advertising_id_and_tracking_flag():
    row = extract(_segment(
        {"device": {"advertisingId": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
                    "adTrackingEnabled": False},
         "os": {"name": "iOS"}, "app": {"name": "Shop"}},
        {"gender": "Female", "birthday": "1990-05-17"},
    ))
    assert row["advertising_id"] == "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    assert row["ad_tracking_allowed"] is False
    assert row["action_source"] == "app_ios"
    assert (row["gender"], row["date_of_birth"]) == ("Female", "1990-05-17")
    assert row["marketing_allowed"] is None


def test_segment_consent_reads_the_advertising_category():
    denied = extract(_segment({"consent": {"categoryPreferences": {
        "Analytics": True, "Advertising": False}}}))
    granted = extract(_segment({"consent": {"categoryPreferences": {"advertising": "true"}}}))
    silent = extract(_segment({}))
    assert (denied["marketing_allowed"], granted["marketing_allowed"],
            silent["marketing_allowed"]) == (False, True, None)


def test_pixel_consent_copied_from_customer_privacy():
    body = {"id": "e-1", "name": "page_viewed", "clientId": "c-1",
            "timestamp": "2024-03-01T10:00:00Z", "data": {},
            "customerPrivacy": {"marketingAllowed": True, "saleOfDataAllowed": False}}
    row = extract({"body": body, "source_format": "shopify_pixel",
                   "source_event_name": "page_viewed", "source_event_id": "e-1"})
    assert (row["marketing_allowed"], row["sale_of_data_allowed"]) == (True, False)
    bare = extract({"body": {**body, "customerPrivacy": None}, "source_format": "shopify_pixel",
                    "source_event_name": "page_viewed", "source_event_id": "e-1"})
    assert (bare["marketing_allowed"], bare["sale_of_data_allowed"]) == (None, None)
