"""Color themes shipped with dit-explore (package data: `*.toml`, read by dit_explore.tui.themes)."""
