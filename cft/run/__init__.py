"""What a run leaves behind: its folder (layout, config, metrics, DONE), the content-addressed cache of
shared artifacts, the metric-key schema, and the W&B mirror of it all."""
