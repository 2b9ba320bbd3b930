"""Staging in DuckDB: raw.events bodies to typed staging.events columns, in bulk.

The rules are those of `extract.py` (which stays as the readable reference, and the oracle the
tests compare this against): each source format's body is parsed once with `json_transform`
into the few fields staging reads, then mapped with SQL. What SQL cannot decide with
certainty is handed to the same Python functions over distinct values only: formatted prices
(`"$1,299.00"`, `"1.299,00 EUR"`) to `parse_money`, IP lists and IPv6 to `client_ip`, user
agents to the crawler-user-agents list, Segment consent objects to `_segment_consent`.
"""

import duckdb
import orjson
import pyarrow as pa
import pycountry

from capi_pipeline.lib.values import parse_money
from capi_pipeline.staging import extract as py

_V = '"VARCHAR"'
_J = '"JSON"'


def _s(**fields: str) -> str:
    return "{" + ",".join(f'"{name}":{kind}' for name, kind in fields.items()) + "}"


_VARIANT = _s(id=_V, sku=_V, title=_V, price=_J,
              product=_s(id=_V, title=_V, vendor=_V, type=_V))
_PIXEL_ADDRESS = _s(firstName=_V, lastName=_V, city=_V, provinceCode=_V, province=_V, zip=_V,
                    countryCode=_V, country=_V, phone=_V)
_PRIVACY = _s(marketingAllowed=_V, saleOfDataAllowed=_V)
_LINE_ITEM = _s(quantity=_V, variant=_VARIANT)
_CART_LINE = _s(quantity=_V, merchandise=_VARIANT, cost=_s(totalAmount=_J))
_CART = _s(id=_V, lines=f"[{_s(quantity=_V, merchandise=_VARIANT)}]", cost=_s(totalAmount=_J))
# A pixel event's item sources (the checkout's line items, a product variant, a cart line, a
# cart, a collection's variants) are read as their JSON text: a day's hundreds of thousands of
# events hold a few thousand distinct ones, whose items (and a cart's id and total, a variant's
# or cart line's price) PIXEL_ITEMS_SQL reads once each. Read here as nested structs and
# turned into items event by event, they took a third of the pixel events' staging.
PIXEL = _s(
    name=_V, clientId=_V,
    context=_s(document=_s(location=_s(href=_V)), navigator=_s(userAgent=_V)),
    customerPrivacy=_PRIVACY,
    data=_s(
        customerPrivacy=_PRIVACY,
        checkout=_s(email=_V, phone=_V, smsMarketingPhone=_V, token=_V, currencyCode=_V,
                    subtotalPrice=_J, billingAddress=_PIXEL_ADDRESS,
                    shippingAddress=_PIXEL_ADDRESS,
                    order=_s(id=_V, customer=_s(id=_V)),
                    lineItems=_J),
        productVariant=_J,
        cartLine=_J,
        cart=_J,
        searchResult=_s(query=_V),
        collection=_s(productVariants=_J),
    ),
)
_TRAITS = _s(email=_V, phone=_V, firstName=_V, first_name=_V, lastName=_V, last_name=_V,
             gender=_V, birthday=_V, dateOfBirth=_V,
             address=_s(city=_V, state=_V, postalCode=_V, postal_code=_V, country=_V))
_PRODUCT = _s(product_id=_V, sku=_V, name=_V, price=_J, quantity=_V, brand=_V, category=_V)
SEGMENT = _s(
    type=_V, event=_V, anonymousId=_V, userId=_V, previousId=_V, traits=_TRAITS,
    context=_s(ip=_V, userAgent=_V, traits=_TRAITS, page=_s(url=_V),
               device=_s(advertisingId=_V, adTrackingEnabled=_V),
               os=_s(name=_V), consent=_s(categoryPreferences=_J)),
    properties=_s(email=_V, phone=_V, url=_V, order_id=_V, checkout_id=_V, query=_V,
                  currency=_V, revenue=_J, subtotal=_J, value=_J, total=_J, price=_J,
                  product_id=_V, sku=_V, name=_V, quantity=_V, brand=_V, category=_V,
                  products=f"[{_PRODUCT}]"),
)
_HOOK_ADDRESS = _s(first_name=_V, last_name=_V, city=_V, province_code=_V, province=_V,
                   zip=_V, country_code=_V, country=_V, phone=_V)
WEBHOOK = _s(
    id=_V, email=_V, contact_email=_V, phone=_V, browser_ip=_V, order_status_url=_V,
    landing_site=_V, checkout_token=_V, cart_token=_V, test=_J, currency=_V,
    subtotal_price=_J,
    customer=_s(id=_V, email=_V, phone=_V, first_name=_V, last_name=_V,
                default_address=_HOOK_ADDRESS),
    billing_address=_HOOK_ADDRESS, shipping_address=_HOOK_ADDRESS,
    client_details=_s(browser_ip=_V, user_agent=_V, accept_language=_V),
    line_items=f"[{_s(product_id=_V, sku=_V, title=_V, price=_J, quantity=_V, vendor=_V)}]",
)
_SP_PRODUCT = "contexts_com_snowplowanalytics_snowplow_ecommerce_product_1_0_0"
_SP_TRANSACTION = "contexts_com_snowplowanalytics_snowplow_ecommerce_transaction_1_0_0"
_SP_USER = "contexts_com_snowplowanalytics_snowplow_ecommerce_user_1_0_0"
_SP_SPIDER = "contexts_com_iab_snowplow_spiders_and_robots_1_0_0"
SNOWPLOW = _s(
    platform=_V, domain_userid=_V, user_id=_V, user_ipaddress=_V, useragent=_V, page_url=_V,
    os_family=_V, mkt_clickid=_V, mkt_network=_V, tr_orderid=_V, tr_total=_V, tr_currency=_V,
    **{_SP_PRODUCT: _V, _SP_TRANSACTION: _V, _SP_USER: _V, _SP_SPIDER: _V},
)


def _case(column: str, mapping: dict[str, str], default: str = "other") -> str:
    arms = " ".join(f"WHEN '{key}' THEN '{value}'" for key, value in mapping.items())
    return f"CASE {column} {arms} ELSE '{default}' END"


_ISO = ", ".join(sorted(f"'{c.alpha_3}'" for c in pycountry.currencies
                        if c.alpha_3 not in {"XXX", "XTS"}))
SNOWPLOW_EVENT_TYPES = {
    "page_view": "page_view", "product_view": "product_view", "list_view": "collection_view",
    "add_to_cart": "add_to_cart", "remove_from_cart": "remove_from_cart",
    "checkout_step": "checkout_step", "transaction": "purchase",
}

MACROS = f"""
CREATE OR REPLACE TEMP MACRO capi_flag(x) AS (
    CASE WHEN lower(trim(x)) IN ('true', 'yes') THEN true
         WHEN lower(trim(x)) IN ('false', 'no') THEN false END);
CREATE OR REPLACE TEMP MACRO capi_currency(h) AS (
    CASE WHEN capi_clean(h) IS NULL THEN NULL
         WHEN upper(capi_clean(h)) IN ({_ISO}) THEN upper(capi_clean(h))
         ELSE capi_py_currency(h) END);
-- A JSON money value (number, string, MoneyV2 or price set) as its amount text and currency.
CREATE OR REPLACE TEMP MACRO capi_money_text(j) AS (
    CASE WHEN j IS NULL THEN NULL
         WHEN starts_with(j, '{{') THEN coalesce(j ->> '$.amount', j ->> '$.shop_money.amount')
         WHEN starts_with(j, '"') THEN j ->> '$'
         ELSE j::VARCHAR END);
-- The currency text a money object carries (checked with capi_currency by the caller: a
-- macro repeats its argument, and this one reads JSON).
CREATE OR REPLACE TEMP MACRO capi_money_own_text(j) AS (
    CASE WHEN starts_with(j, '{{') THEN coalesce(j ->> '$.currencyCode',
        j ->> '$.currency_code', j ->> '$.currency', j ->> '$.shop_money.currencyCode',
        j ->> '$.shop_money.currency_code') END);
CREATE OR REPLACE TEMP MACRO capi_bounded(a) AS (
    CASE WHEN a >= 0 AND a < 1000000000000 THEN a END);
-- The amount of a money text as extract.money() reads it: plain numbers here, the rest
-- (display text with signs, codes and separators) through parse_money.
CREATE OR REPLACE TEMP MACRO capi_amount_of_text(t) AS (
    CASE WHEN t IS NULL THEN NULL
         WHEN regexp_full_match(t, '\\d{{1,13}}(\\.\\d{{1,12}})?')
              THEN capi_bounded(try_cast(t AS DECIMAL(18, 2)))
         WHEN capi_clean(t) IS NULL THEN NULL
         ELSE capi_bounded(try_cast(split_part(capi_py_money(t, NULL), '|', 1)
                                    AS DECIMAL(18, 2))) END);
CREATE OR REPLACE TEMP MACRO capi_quantity(q) AS (
    CASE WHEN regexp_full_match(trim(q), '[+-]?\\d{{1,9}}(\\.0*)?')
              AND try_cast(trim(q) AS DOUBLE) > 0 AND try_cast(trim(q) AS DOUBLE) <= 100000
         THEN try_cast(try_cast(trim(q) AS DOUBLE) AS INTEGER) ELSE 1 END);
CREATE OR REPLACE TEMP MACRO capi_order_id(v) AS (
    CASE WHEN capi_clean(v) IS NULL OR v IN ('true', 'false') THEN NULL
         WHEN starts_with(v, 'gid://shopify/') AND regexp_matches(v, '^gid://shopify/\\w+/\\d+')
              THEN regexp_extract(v, '^gid://shopify/\\w+/(\\d+)', 1)
         WHEN regexp_full_match(v, '\\d+\\.0+') THEN split_part(v, '.', 1)
         ELSE capi_clean(v) END);
CREATE OR REPLACE TEMP MACRO capi_url_path(u) AS (
    regexp_extract(u, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*(/[^?#]*)?', 1));
CREATE OR REPLACE TEMP MACRO capi_host(u) AS (
    nullif(lower(regexp_extract(u, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^:/?#]*)', 1)),
           ''));
CREATE OR REPLACE TEMP MACRO capi_epik(u) AS (
    CASE WHEN contains(u, 'epik=') THEN capi_clean(url_decode(replace(
        regexp_extract(regexp_extract(u, '^[^#]*'), '[?&]epik=([^&#]+)', 1), '+', ' '))) END);
CREATE OR REPLACE TEMP MACRO capi_checkout_token(u) AS (
    CASE WHEN len(string_split(capi_url_path(u), '/')) > 3
              AND string_split(capi_url_path(u), '/')[2] = 'checkouts'
         THEN capi_clean(CASE WHEN string_split(capi_url_path(u), '/')[3] = 'cn'
                              THEN string_split(capi_url_path(u), '/')[4]
                              ELSE string_split(capi_url_path(u), '/')[3] END) END);
CREATE OR REPLACE TEMP MACRO capi_variant_item(v, q) AS (
    {{'id': coalesce(capi_clean(v.product.id), capi_clean(v.id), capi_clean(v.sku)),
      'name': coalesce(capi_clean(v.product.title), capi_clean(v.title)),
      'price_json': v.price, 'quantity': q,
      'brand': capi_clean(v.product.vendor), 'category': capi_clean(v.product.type)}});
-- A list of items (price as its JSON money value) with each price read as extract.money()
-- reads it. Two passes: a macro repeats its argument, so each price's JSON is read once and
-- the second pass reads the text.
CREATE OR REPLACE TEMP MACRO capi_typed_items(items) AS (
    list_transform(list_transform(items, lambda i: {{'id': i.id, 'name': i.name,
            'price_text': capi_money_text(i.price_json), 'quantity': i.quantity,
            'brand': i.brand, 'category': i.category}}),
        lambda i: {{'id': i.id, 'name': i.name, 'price': capi_amount_of_text(i.price_text),
                   'quantity': i.quantity, 'brand': i.brand, 'category': i.category}}));
CREATE OR REPLACE TEMP MACRO capi_has_pixel_address(a) AS (
    a IS NOT NULL AND (a.firstName IS NOT NULL OR a.lastName IS NOT NULL OR a.city IS NOT NULL
        OR a.zip IS NOT NULL OR a.countryCode IS NOT NULL OR a.country IS NOT NULL
        OR a.province IS NOT NULL OR a.provinceCode IS NOT NULL OR a.phone IS NOT NULL));
CREATE OR REPLACE TEMP MACRO capi_has_hook_address(a) AS (
    a IS NOT NULL AND (a.first_name IS NOT NULL OR a.last_name IS NOT NULL
        OR a.city IS NOT NULL OR a.zip IS NOT NULL OR a.country_code IS NOT NULL
        OR a.country IS NOT NULL OR a.province IS NOT NULL OR a.province_code IS NOT NULL
        OR a.phone IS NOT NULL));
"""

_COMMON = """source_file, line_no, msg_index, source_format, source_event_name,
    event_time, received_at, time_flags, envelope_ip, envelope_user_agent, envelope_store,
    CASE WHEN capi_clean(source_event_id) IS NOT NULL THEN capi_clean(source_event_id)
         ELSE 'h-' || left(sha256(source_format || chr(0) || body), 32) END AS event_id"""

_PIXEL_SELECT = f"""
SELECT {_COMMON},
    {_case('capi_clean(p.name)', py.PIXEL_EVENT_TYPES)} AS event_type,
    'web' AS action_source,
    capi_clean(p.clientId) AS client_id,
    CASE WHEN has_checkout THEN capi_clean(c.order.customer.id) END AS customer_id,
    CASE WHEN has_checkout THEN capi_clean(c.email) END AS email,
    CASE WHEN has_checkout THEN coalesce(capi_clean(c.phone), capi_clean(c.smsMarketingPhone),
                                         capi_clean(a.phone)) END AS phone,
    CASE WHEN has_checkout THEN capi_clean(a.firstName) END AS first_name,
    CASE WHEN has_checkout THEN capi_clean(a.lastName) END AS last_name,
    CASE WHEN has_checkout THEN capi_clean(a.city) END AS city,
    CASE WHEN has_checkout THEN coalesce(capi_clean(a.provinceCode), capi_clean(a.province))
         END AS state,
    CASE WHEN has_checkout THEN capi_clean(a.zip) END AS zip,
    CASE WHEN has_checkout THEN coalesce(capi_clean(a.countryCode), capi_clean(a.country))
         END AS country,
    NULL::VARCHAR AS row_ip,
    p.context.navigator.userAgent AS row_user_agent,
    page_url,
    NULL::VARCHAR AS store_url,
    NULL::VARCHAR AS explicit_click_id,
    CASE WHEN has_checkout THEN capi_order_id(c.order.id) END AS order_id,
    -- A cart's token, and the money of a variant, cart line or cart: PIXEL_ITEMS_SQL.
    CASE WHEN has_checkout THEN capi_checkout_token(page_url) END AS cart_token,
    CASE WHEN has_checkout THEN capi_clean(c.token) END AS checkout_token,
    NULL::VARCHAR AS gender, NULL::VARCHAR AS date_of_birth, NULL::VARCHAR AS advertising_id,
    NULL::BOOLEAN AS ad_tracking_allowed,
    capi_flag(privacy.marketingAllowed) AS marketing_allowed,
    capi_flag(privacy.saleOfDataAllowed) AS sale_of_data_allowed,
    CASE WHEN has_checkout THEN c.subtotalPrice END AS money_json,
    CASE WHEN has_checkout THEN capi_clean(c.currencyCode) END AS money_hint,
    CASE WHEN has_checkout OR p.data.productVariant IS NOT NULL OR p.data.cartLine IS NOT NULL
              OR p.data.cart IS NOT NULL THEN NULL
         WHEN p.data.searchResult IS NOT NULL THEN capi_clean(p.data.searchResult.query)
    END AS search_string,
    -- Which source the items come from, in this order, and its JSON text (a JSON null is
    -- NULL, as it was read as a struct; a list must be an array to be read as one).
    CASE WHEN has_checkout THEN 'checkout'
         WHEN p.data.productVariant IS NOT NULL THEN 'variant'
         WHEN p.data.cartLine IS NOT NULL THEN 'cart_line'
         WHEN p.data.cart IS NOT NULL THEN 'cart'
         WHEN p.data.searchResult IS NOT NULL THEN NULL
         WHEN p.data.collection IS NOT NULL THEN 'collection' END AS item_kind,
    CASE WHEN has_checkout THEN c.lineItems
         WHEN p.data.productVariant IS NOT NULL THEN p.data.productVariant
         WHEN p.data.cartLine IS NOT NULL THEN p.data.cartLine
         WHEN p.data.cart IS NOT NULL THEN p.data.cart
         WHEN p.data.searchResult IS NOT NULL THEN NULL
         WHEN p.data.collection IS NOT NULL THEN p.data.collection.productVariants
    END::VARCHAR AS item_source,
    false AS row_is_test
FROM (
    SELECT *, p.data.checkout AS c,
        CASE WHEN capi_has_pixel_address(p.data.checkout.billingAddress)
             THEN p.data.checkout.billingAddress ELSE p.data.checkout.shippingAddress END AS a,
        p.data.checkout IS NOT NULL AND (p.data.checkout.token IS NOT NULL
            OR p.data.checkout.email IS NOT NULL
            OR starts_with(p.data.checkout.lineItems, '[')
            OR p.data.checkout.subtotalPrice IS NOT NULL OR p.data.checkout.order.id IS NOT NULL
            OR p.data.checkout.currencyCode IS NOT NULL) AS has_checkout,
        capi_clean(p.context.document.location.href) AS page_url,
        CASE WHEN p.customerPrivacy.marketingAllowed IS NOT NULL
                  OR p.customerPrivacy.saleOfDataAllowed IS NOT NULL
             THEN p.customerPrivacy ELSE p.data.customerPrivacy END AS privacy
    FROM (SELECT *, json_transform(body, '{PIXEL}') AS p FROM raw.events
          WHERE partition_date = $1 AND source_format = 'shopify_pixel')
)
"""

_SEGMENT_SELECT = f"""
SELECT {_COMMON},
    {_case('name', py.SEGMENT_EVENT_TYPES)} AS event_type,
    CASE WHEN lower(capi_clean(s.context.os.name)) IN ('ios', 'ipados') THEN 'app_ios'
         WHEN lower(capi_clean(s.context.os.name)) = 'android' THEN 'app_android'
         ELSE 'web' END AS action_source,
    capi_clean(s.anonymousId) AS client_id,
    CASE WHEN s.type = 'alias' THEN coalesce(capi_clean(s.userId), capi_clean(s.previousId))
         ELSE capi_clean(s.userId) END AS customer_id,
    coalesce(capi_clean(coalesce(s.traits.email, s.context.traits.email)),
             capi_clean(s.properties.email)) AS email,
    coalesce(capi_clean(coalesce(s.traits.phone, s.context.traits.phone)),
             capi_clean(s.properties.phone)) AS phone,
    coalesce(capi_clean(coalesce(s.traits.firstName, s.context.traits.firstName)),
             capi_clean(coalesce(s.traits.first_name, s.context.traits.first_name)))
             AS first_name,
    coalesce(capi_clean(coalesce(s.traits.lastName, s.context.traits.lastName)),
             capi_clean(coalesce(s.traits.last_name, s.context.traits.last_name))) AS last_name,
    capi_clean(addr.city) AS city,
    capi_clean(addr.state) AS state,
    coalesce(capi_clean(addr.postalCode), capi_clean(addr.postal_code)) AS zip,
    capi_clean(addr.country) AS country,
    s.context.ip AS row_ip,
    s.context.userAgent AS row_user_agent,
    coalesce(capi_clean(s.context.page.url), capi_clean(s.properties.url)) AS page_url,
    NULL::VARCHAR AS store_url,
    NULL::VARCHAR AS explicit_click_id,
    capi_order_id(s.properties.order_id) AS order_id,
    NULL::VARCHAR AS cart_token,
    capi_clean(s.properties.checkout_id) AS checkout_token,
    capi_clean(coalesce(s.traits.gender, s.context.traits.gender)) AS gender,
    coalesce(capi_clean(coalesce(s.traits.birthday, s.context.traits.birthday)),
             capi_clean(coalesce(s.traits.dateOfBirth, s.context.traits.dateOfBirth)))
             AS date_of_birth,
    capi_clean(s.context.device.advertisingId) AS advertising_id,
    capi_flag(s.context.device.adTrackingEnabled) AS ad_tracking_allowed,
    CASE WHEN s.context.consent.categoryPreferences IS NOT NULL
         THEN capi_py_consent(s.context.consent.categoryPreferences) END AS marketing_allowed,
    NULL::BOOLEAN AS sale_of_data_allowed,
    CASE WHEN capi_clean(capi_money_text(s.properties.revenue)) IS NOT NULL
              THEN s.properties.revenue
         WHEN capi_clean(capi_money_text(s.properties.subtotal)) IS NOT NULL
              THEN s.properties.subtotal
         WHEN capi_clean(capi_money_text(s.properties.value)) IS NOT NULL
              THEN s.properties.value
         WHEN capi_clean(capi_money_text(s.properties.total)) IS NOT NULL
              THEN s.properties.total
         ELSE s.properties.price END AS money_json,
    hint AS money_hint,
    capi_clean(s.properties.query) AS search_string,
    list_transform(
        CASE WHEN len(coalesce(s.properties.products, [])) > 0 THEN s.properties.products
             WHEN s.properties.product_id IS NOT NULL OR capi_clean(s.properties.sku) IS NOT NULL
             THEN [{{'product_id': s.properties.product_id, 'sku': s.properties.sku,
                     'name': s.properties.name, 'price': s.properties.price,
                     'quantity': s.properties.quantity, 'brand': s.properties.brand,
                     'category': s.properties.category}}]
             ELSE [] END,
        lambda x: {{'id': CASE WHEN x.product_id IS NOT NULL THEN capi_clean(x.product_id)
                              ELSE capi_clean(x.sku) END,
                   'name': capi_clean(x.name), 'price_json': x.price,
                   'quantity': capi_quantity(x.quantity), 'brand': capi_clean(x.brand),
                   'category': capi_clean(x.category)}}) AS items,
    false AS row_is_test
FROM (
    SELECT *, CASE WHEN s.type = 'track' THEN capi_clean(s.event) ELSE s.type END AS name,
        coalesce(s.traits.address, s.context.traits.address) AS addr,
        capi_clean(s.properties.currency) AS hint
    FROM (SELECT *, json_transform(body, '{SEGMENT}') AS s FROM raw.events
          WHERE partition_date = $1 AND source_format = 'segment')
)
"""

_WEBHOOK_SELECT = f"""
SELECT {_COMMON},
    {_case('source_event_name', py.WEBHOOK_EVENT_TYPES)} AS event_type,
    CASE WHEN capi_clean(w.landing_site) IS NOT NULL OR nullif(w.browser_ip, '') IS NOT NULL
              OR w.client_details.browser_ip IS NOT NULL OR w.client_details.user_agent
              IS NOT NULL OR w.client_details.accept_language IS NOT NULL
         THEN 'web' ELSE 'offline' END AS action_source,
    NULL::VARCHAR AS client_id,
    capi_clean(w.customer.id) AS customer_id,
    coalesce(capi_clean(w.email), capi_clean(w.contact_email), capi_clean(w.customer.email))
        AS email,
    coalesce(capi_clean(w.phone), capi_clean(w.customer.phone), capi_clean(a.phone)) AS phone,
    coalesce(capi_clean(a.first_name), capi_clean(w.customer.first_name)) AS first_name,
    coalesce(capi_clean(a.last_name), capi_clean(w.customer.last_name)) AS last_name,
    capi_clean(a.city) AS city,
    coalesce(capi_clean(a.province_code), capi_clean(a.province)) AS state,
    capi_clean(a.zip) AS zip,
    coalesce(capi_clean(a.country_code), capi_clean(a.country)) AS country,
    coalesce(capi_clean(w.browser_ip), capi_clean(w.client_details.browser_ip)) AS row_ip,
    w.client_details.user_agent AS row_user_agent,
    NULL::VARCHAR AS page_url,
    capi_clean(w.order_status_url) AS store_url,
    capi_epik(capi_clean(w.landing_site)) AS explicit_click_id,
    capi_order_id(w.id) AS order_id,
    capi_clean(w.cart_token) AS cart_token,
    capi_clean(w.checkout_token) AS checkout_token,
    NULL::VARCHAR AS gender, NULL::VARCHAR AS date_of_birth, NULL::VARCHAR AS advertising_id,
    NULL::BOOLEAN AS ad_tracking_allowed, NULL::BOOLEAN AS marketing_allowed,
    NULL::BOOLEAN AS sale_of_data_allowed,
    w.subtotal_price AS money_json, capi_clean(w.currency) AS money_hint,
    NULL::VARCHAR AS search_string,
    list_transform(coalesce(w.line_items, []),
        lambda l: {{'id': coalesce(capi_clean(l.product_id), capi_clean(l.sku)),
                   'name': capi_clean(l.title), 'price_json': l.price,
                   'quantity': capi_quantity(l.quantity), 'brand': capi_clean(l.vendor),
                   'category': NULL::VARCHAR}}) AS items,
    coalesce(w.test = 'true', false) AS row_is_test
FROM (
    SELECT *,
        CASE WHEN capi_has_hook_address(w.billing_address) THEN w.billing_address
             WHEN capi_has_hook_address(w.shipping_address) THEN w.shipping_address
             ELSE w.customer.default_address END AS a
    FROM (SELECT *, json_transform(body, '{WEBHOOK}') AS w FROM raw.events
          WHERE partition_date = $1 AND source_format = 'shopify_webhook')
)
"""

_SNOWPLOW_SELECT = f"""
SELECT {_COMMON},
    {_case('source_event_name', SNOWPLOW_EVENT_TYPES)} AS event_type,
    CASE WHEN sp.platform = 'mob' THEN
         CASE WHEN lower(sp.os_family) LIKE '%ios%' THEN 'app_ios' ELSE 'app_android' END
         ELSE 'web' END AS action_source,
    capi_clean(sp.domain_userid) AS client_id,
    capi_clean(sp.user_id) AS customer_id,
    capi_clean(CASE WHEN json_valid(sp.{_SP_USER})
                    THEN json_extract_string(sp.{_SP_USER}, '$[0].email') END) AS email,
    NULL::VARCHAR AS phone, NULL::VARCHAR AS first_name, NULL::VARCHAR AS last_name,
    NULL::VARCHAR AS city, NULL::VARCHAR AS state, NULL::VARCHAR AS zip,
    NULL::VARCHAR AS country,
    sp.user_ipaddress AS row_ip,
    sp.useragent AS row_user_agent,
    capi_clean(sp.page_url) AS page_url,
    NULL::VARCHAR AS store_url,
    NULL::VARCHAR AS explicit_click_id,
    coalesce(capi_order_id(transaction ->> '$.transaction_id'), capi_order_id(sp.tr_orderid))
        AS order_id,
    NULL::VARCHAR AS cart_token, NULL::VARCHAR AS checkout_token,
    NULL::VARCHAR AS gender, NULL::VARCHAR AS date_of_birth, NULL::VARCHAR AS advertising_id,
    NULL::BOOLEAN AS ad_tracking_allowed, NULL::BOOLEAN AS marketing_allowed,
    NULL::BOOLEAN AS sale_of_data_allowed,
    CASE WHEN transaction IS NOT NULL THEN transaction -> '$.revenue'
         ELSE to_json(sp.tr_total) END AS money_json,
    CASE WHEN transaction IS NOT NULL THEN transaction ->> '$.currency'
         ELSE sp.tr_currency END AS money_hint,
    NULL::VARCHAR AS search_string,
    CASE WHEN json_valid(sp.{_SP_PRODUCT}) THEN list_transform(
        coalesce(json_transform(sp.{_SP_PRODUCT},
            '[{_s(id=_V, name=_V, price=_J, quantity=_V, brand=_V, category=_V)}]'), []),
        lambda x: {{'id': capi_clean(x.id), 'name': capi_clean(x.name),
                   'price_json': x.price,
                   'quantity': capi_quantity(x.quantity), 'brand': capi_clean(x.brand),
                   'category': capi_clean(x.category)}})
         ELSE [] END AS items,
    false AS row_is_test,
    coalesce(CASE WHEN json_valid(sp.{_SP_SPIDER})
                  THEN json_extract_string(sp.{_SP_SPIDER}, '$[0].spiderOrRobot') = 'true' END,
             false) AS row_is_spider
FROM (
    SELECT *,
        CASE WHEN json_valid(sp.{_SP_TRANSACTION})
             THEN json_extract(sp.{_SP_TRANSACTION}, '$[0]') END AS transaction
    FROM (SELECT *, json_transform(body, '{SNOWPLOW}') AS sp FROM raw.events
          WHERE partition_date = $1 AND source_format = 'snowplow')
)
"""

PRE_SQL = f"""
CREATE OR REPLACE TEMP TABLE _staging_pre AS
{_PIXEL_SELECT}
UNION ALL BY NAME
{_SEGMENT_SELECT}
UNION ALL BY NAME
{_WEBHOOK_SELECT}
UNION ALL BY NAME
{_SNOWPLOW_SELECT}
"""

# The items of each distinct item source of the day's pixel events (see PIXEL), read as they
# were when each event read its own; with a cart's token and the money a variant, cart line
# or cart carries. `source_key` is the source's text, '' for none.
PIXEL_ITEMS_SQL = f"""
CREATE OR REPLACE TEMP TABLE _pixel_items AS
SELECT item_kind, source_key, capi_typed_items(CASE item_kind
        WHEN 'checkout' THEN list_transform(
            coalesce(json_transform(item_source, '[{_LINE_ITEM}]'), []),
            lambda l: capi_variant_item(l.variant, capi_quantity(l.quantity)))
        WHEN 'variant' THEN [capi_variant_item(json_transform(item_source, '{_VARIANT}'), 1)]
        WHEN 'cart_line' THEN [capi_variant_item(cart_line.merchandise,
                                                 capi_quantity(cart_line.quantity))]
        WHEN 'cart' THEN list_transform(coalesce(cart.lines, []),
            lambda l: capi_variant_item(l.merchandise, capi_quantity(l.quantity)))
        WHEN 'collection' THEN list_transform(
            coalesce(json_transform(item_source, '[{_VARIANT}]'), [])[1:50],
            lambda v: capi_variant_item(v, NULL::INTEGER))
    END) AS items,
    CASE item_kind
        WHEN 'variant' THEN json_transform(item_source, '{{"price":"JSON"}}').price
        WHEN 'cart_line' THEN cart_line.cost.totalAmount
        WHEN 'cart' THEN cart.cost.totalAmount END AS money_json,
    CASE WHEN item_kind = 'cart' THEN capi_clean(cart.id) END AS cart_token
FROM (
    SELECT item_kind, source_key, nullif(source_key, '') AS item_source,
        CASE WHEN item_kind = 'cart_line'
             THEN json_transform(nullif(source_key, ''), '{_CART_LINE}') END AS cart_line,
        CASE WHEN item_kind = 'cart'
             THEN json_transform(nullif(source_key, ''), '{_CART}') END AS cart
    FROM (SELECT DISTINCT item_kind, coalesce(item_source, '') AS source_key
          FROM _staging_pre WHERE item_kind IS NOT NULL)
)
"""

# The typed items of each distinct list of items the day's other events hold (a pixel event's
# come typed from PIXEL_ITEMS_SQL): product lists recur across a day's events, and reading
# their prices once per list rather than once per event took a tenth of the final statement.
ITEM_PRICES_SQL = """
CREATE OR REPLACE TEMP TABLE _item_prices AS
SELECT raw_items, capi_typed_items(raw_items) AS items
FROM (SELECT DISTINCT items AS raw_items FROM _staging_pre WHERE items IS NOT NULL)
"""

URL_MAP_SQL = """
CREATE OR REPLACE TEMP TABLE _url_map AS
SELECT raw, capi_host(raw) AS host, capi_epik(raw) AS epik,
       starts_with(capi_url_path(raw), '/password') AS is_password_page
FROM (SELECT page_url AS raw FROM _staging_pre UNION SELECT store_url FROM _staging_pre)
WHERE raw IS NOT NULL
"""

FIELDS = ("customer_id", "email", "phone", "first_name", "last_name", "city", "state", "zip",
          "country", "ip", "user_agent", "click_id", "checkout_token", "cart_token", "value",
          "currency")

# The order of arrival and the first arrival of each event id, on the key columns only: a
# window over the wide rows would sort every column with them.
ARRIVALS_SQL = """
CREATE OR REPLACE TEMP TABLE _arrivals AS
SELECT source_file, line_no, msg_index, arrival,
    CASE WHEN row_number() OVER (PARTITION BY event_id ORDER BY arrival) > 1
         THEN event_id END AS repeat_of
FROM (SELECT source_file, line_no, msg_index, event_id,
          row_number() OVER (ORDER BY received_at NULLS LAST, source_file, line_no,
                             msg_index) AS arrival
      FROM _staging_pre)
"""

# The staged rows to typed and flagged rows, through the day's maps; `{where}` filters them.
# The purchases reporting an order go through it on their own first (ORDERS_SQL), so that the
# final statement reads the day's rows once, as a stream: when the order reports were worked
# out from the same rows in one statement, DuckDB kept a copy of every wide row for its three
# readers.
_FLAGGED_CTES = """
WITH sourced AS (
    -- Each event's typed items (a pixel event's from its item source, with its cart's token
    -- and money where they come from there).
    SELECT p.* EXCLUDE (items, money_json, cart_token, item_kind, item_source),
        coalesce(i.items, t.items, []) AS items,
        coalesce(p.money_json, i.money_json) AS money_json,
        coalesce(p.cart_token, i.cart_token) AS cart_token,
        k.arrival, k.repeat_of
    FROM _staging_pre p
    JOIN _arrivals k USING (source_file, line_no, msg_index)
    LEFT JOIN _pixel_items i
        ON i.item_kind = p.item_kind AND i.source_key = coalesce(p.item_source, '')
    LEFT JOIN _item_prices t ON t.raw_items = p.items
    {where}
),
priced AS (
    SELECT *, capi_money_text(money_json) AS money_text,
        capi_money_own_text(money_json) AS money_own_text
    FROM sourced
),
owned AS (
    SELECT * EXCLUDE (money_own_text), capi_currency(money_own_text) AS money_own FROM priced
),
monied AS (
    SELECT *,
        CASE WHEN capi_clean(money_text) IS NOT NULL
                  AND NOT regexp_full_match(money_text, '\\d{1,13}(\\.\\d{1,12})?')
             THEN capi_py_money(money_text, coalesce(money_own, money_hint)) END AS money_py
    FROM owned
),
valued AS (
    SELECT *,
        CASE WHEN money_py IS NOT NULL
             THEN capi_bounded(try_cast(split_part(money_py, '|', 1) AS DECIMAL(18, 2)))
             WHEN capi_clean(money_text) IS NOT NULL
             THEN capi_bounded(try_cast(money_text AS DECIMAL(18, 2))) END AS value,
        CASE WHEN money_py IS NOT NULL THEN nullif(split_part(money_py, '|', 2), '')
             ELSE coalesce(money_own, capi_currency(money_hint)) END AS currency
    FROM monied
),
typed AS (
    SELECT p.*,
        coalesce(ei.ip, ri.ip) AS ip,
        coalesce(capi_clean(p.envelope_user_agent), capi_clean(p.row_user_agent)) AS user_agent,
        coalesce(p.explicit_click_id, pu.epik) AS click_id,
        nullif(list_sum(list_transform(p.items, lambda i: coalesce(i.quantity, 0))), 0)::INTEGER
            AS num_items,
        coalesce(capi_clean(p.envelope_store), pu.host, su.host) AS store,
        p.row_is_test OR coalesce(pu.is_password_page, false) AS is_test
    FROM valued p
    LEFT JOIN _ip_map ei ON ei.raw = p.envelope_ip
    LEFT JOIN _ip_map ri ON ri.raw = p.row_ip
    LEFT JOIN _url_map pu ON pu.raw = p.page_url
    LEFT JOIN _url_map su ON su.raw = p.store_url
),
flagged AS (
    SELECT t.*, coalesce(b.is_bot, false) OR coalesce(t.row_is_spider, false) AS is_bot
    FROM typed t
    LEFT JOIN _ua_map b ON b.raw = t.user_agent
)
"""

# The first arrival of each purchase that reports an order, their rank (the pixel's report
# first, then the earliest) and how many reports each order has.
ORDERS_SQL = ("CREATE OR REPLACE TEMP TABLE _order_reports AS" + _FLAGGED_CTES.replace(
    "{where}", "WHERE k.repeat_of IS NULL AND p.event_type = 'purchase' "
               "AND p.order_id IS NOT NULL") + """
SELECT *,
    row_number() OVER (PARTITION BY order_id
        ORDER BY source_format <> 'shopify_pixel', event_time, arrival) AS report_rank,
    count(*) OVER (PARTITION BY order_id) AS report_count
FROM flagged
""")

FINAL_SQL = _FLAGGED_CTES.replace("{where}", "") + f""",
winners AS (
    SELECT order_id, event_id AS winner_id, arrival AS winner_arrival
    FROM _order_reports WHERE report_rank = 1 AND report_count > 1
),
fills AS (
    SELECT f.order_id,
        {", ".join(f"first(f.{name} ORDER BY f.arrival) FILTER (WHERE f.{name} IS NOT NULL) "
                   f"AS {name}" for name in FIELDS)},
        bool_or(f.is_test) AS is_test,
        first(f.items ORDER BY f.arrival) FILTER (WHERE len(f.items) > 0) AS items,
        first(f.num_items ORDER BY f.arrival) FILTER (WHERE len(f.items) > 0) AS num_items
    FROM _order_reports f
    WHERE f.report_count > 1
    GROUP BY f.order_id
)
SELECT
    $1::DATE AS partition_date,
    f.source_file || ':' || f.line_no || ':' || f.msg_index AS event_key,
    f.source_format, f.source_event_name, f.event_type, f.action_source, f.event_time,
    f.received_at, f.event_id, f.store, f.client_id,
    {", ".join(f"CASE WHEN w.winner_arrival = f.arrival THEN coalesce(f.{name}, x.{name}) "
               f"ELSE f.{name} END AS {name}" for name in FIELDS)},
    f.page_url, f.order_id, f.gender, f.date_of_birth, f.advertising_id,
    f.ad_tracking_allowed, f.marketing_allowed, f.sale_of_data_allowed, f.search_string,
    CASE WHEN w.winner_arrival = f.arrival AND len(f.items) = 0 AND x.items IS NOT NULL
         THEN x.items ELSE f.items END AS items,
    CASE WHEN w.winner_arrival = f.arrival AND len(f.items) = 0 AND x.items IS NOT NULL
         THEN x.num_items ELSE f.num_items END AS num_items,
    f.is_bot,
    CASE WHEN w.winner_arrival = f.arrival THEN f.is_test OR x.is_test ELSE f.is_test END
        AS is_test,
    f.time_flags,
    coalesce(f.repeat_of, CASE WHEN o.winner_arrival IS NOT NULL
                                    AND o.winner_arrival <> f.arrival
                                    AND r.arrival IS NOT NULL THEN o.winner_id END)
        AS duplicate_of
FROM flagged f
LEFT JOIN winners w ON w.winner_arrival = f.arrival
LEFT JOIN fills x ON x.order_id = f.order_id AND w.winner_arrival IS NOT NULL
LEFT JOIN _order_reports r ON r.arrival = f.arrival
LEFT JOIN winners o ON o.order_id = f.order_id AND r.arrival IS NOT NULL
ORDER BY f.arrival
"""


def _py_money(text: str, hint: str | None) -> str:
    amount, currency = parse_money(text, hint)
    return f"{'' if amount is None else amount}|{currency or ''}"


def _py_currency(hint: str) -> str | None:
    return parse_money(None, hint)[1]


def _py_consent(preferences: str) -> bool | None:
    try:
        value = orjson.loads(preferences)
    except orjson.JSONDecodeError:
        return None
    return py._segment_consent({"consent": {"categoryPreferences": value}})


def register(conn: duckdb.DuckDBPyConnection) -> None:
    """The Python helpers the staging SQL calls for the values it cannot read itself."""
    for name, function, arguments, returns in (
        ("capi_py_money", _py_money, [duckdb.sqltype("VARCHAR")] * 2, "VARCHAR"),
        ("capi_py_currency", _py_currency, [duckdb.sqltype("VARCHAR")], "VARCHAR"),
        ("capi_py_consent", _py_consent, [duckdb.sqltype("VARCHAR")], "BOOLEAN"),
    ):
        try:
            conn.remove_function(name)
        except (duckdb.InvalidInputException, duckdb.CatalogException):
            pass
        conn.create_function(name, function, arguments, duckdb.sqltype(returns),
                             null_handling="special", side_effects=False)


def _prepare(conn: duckdb.DuckDBPyConnection, day) -> None:
    from capi_pipeline.ingest.fastpath import MACROS as INGEST_MACROS

    conn.execute("SET TimeZone = 'UTC'")
    register(conn)
    conn.execute(INGEST_MACROS)
    conn.execute(MACROS)
    conn.execute(PRE_SQL, [day])
    conn.execute(PIXEL_ITEMS_SQL)
    conn.execute(ITEM_PRICES_SQL)
    # What the URLs say (host, click id, a password page), read once per distinct URL: a day's
    # events share a few thousand page URLs, and the regular expressions cost more per row
    # than the join.
    conn.execute(URL_MAP_SQL)
    ips = [row[0] for row in conn.execute(
        "SELECT DISTINCT v FROM (SELECT envelope_ip AS v FROM _staging_pre UNION ALL "
        "SELECT row_ip FROM _staging_pre) WHERE v IS NOT NULL").fetchall()]
    conn.register("_ip_map", pa.table({
        "raw": pa.array(ips, pa.string()),
        "ip": pa.array([py.client_ip(ip) for ip in ips], pa.string())}))
    agents = [row[0] for row in conn.execute(
        "SELECT DISTINCT coalesce(capi_clean(envelope_user_agent), capi_clean(row_user_agent)) "
        "FROM _staging_pre WHERE coalesce(capi_clean(envelope_user_agent), "
        "capi_clean(row_user_agent)) IS NOT NULL").fetchall()]
    conn.register("_ua_map", pa.table({
        "raw": pa.array(agents, pa.string()),
        "is_bot": pa.array([py.is_bot(ua) for ua in agents], pa.bool_())}))
    conn.execute(ARRIVALS_SQL)
    conn.execute(ORDERS_SQL)


def _cleanup(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("DROP TABLE IF EXISTS _staging_pre")
    conn.execute("DROP TABLE IF EXISTS _arrivals")
    conn.execute("DROP TABLE IF EXISTS _order_reports")
    conn.execute("DROP TABLE IF EXISTS _url_map")
    conn.execute("DROP TABLE IF EXISTS _pixel_items")
    conn.execute("DROP TABLE IF EXISTS _item_prices")
    conn.unregister("_ip_map")
    conn.unregister("_ua_map")


def build_staging(conn: duckdb.DuckDBPyConnection, day) -> pa.Table:
    """The staging rows of one UTC day, as an Arrow table (for tests and inspection)."""
    _prepare(conn, day)
    try:
        return conn.sql(FINAL_SQL, params=[day]).to_arrow_table()
    finally:
        _cleanup(conn)


def write_staging(conn: duckdb.DuckDBPyConnection, day) -> int:
    """Replace one day of staging.events in one transaction, without leaving DuckDB."""
    _prepare(conn, day)
    try:
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute("DELETE FROM staging.events WHERE partition_date = ?", [day])
            conn.execute(f"INSERT INTO staging.events BY NAME {FINAL_SQL}", [day])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        _cleanup(conn)
    return conn.execute("SELECT count(*) FROM staging.events WHERE partition_date = ?",
                        [day]).fetchone()[0]
