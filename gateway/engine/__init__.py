"""The alert engine, pure: payload formats, rules, the alert lifecycle; time is a parameter."""
