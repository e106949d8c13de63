"""The reference DANN/CGDM training pipeline, built only on grl_cuda's public API
(``import grl_cuda`` never imports it). Layout: docs/architecture.md."""
