"""The gateway's own consumers: sensors, the site's control topics, dashboards."""
