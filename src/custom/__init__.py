"""Methods and entry scripts built on adarank through its extension points (adarank never imports them)."""
