{# Models land in the schema they name (marts), not in dbt's default <target>_<schema>, so an
   analyst finds marts.match_rate_daily beside monitoring.match_rate. #}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ custom_schema_name if custom_schema_name else target.schema }}
{%- endmacro %}
