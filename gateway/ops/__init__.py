"""Operations: logs, metrics, health, sd_notify, ports, `gateway check`."""
