"""The bundled PJRT runner: devices, host-data sharding, compilation, execution, checks."""
