"""The study's plans for the real models, shipped with dit-explore (package data: `MODEL/*.plan.toml`)."""
