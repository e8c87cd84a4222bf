"""Per-device settings (YAML, one schema) that the runtime loads by name: `resonance serve --config pc-cpu`."""
