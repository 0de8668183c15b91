# dialguard: `make run` starts the whole system on the embedded default, `make test` runs every
# test. Both install what is missing first (virtualenv, Python packages with the compiled number
# stage, Kafka jars).
PYTHON ?= python3.11
# rustup puts cargo here; a non-login shell may not have it on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DG     := $(PY) -m services.cli
STAMP  := $(VENV)/.installed
#: The compiled number stage (streams/native): edited sources are rebuilt by the next make.
NATIVE := streams/native/Cargo.toml streams/native/Cargo.lock $(wildcard streams/native/src/*.rs)
JARS   := .dialguard/kafka/libs/.complete
SIMULATE ?= 1
PYTEST_ARGS ?=

.PHONY: help install jars run stop test unit integration eval bench system-packages dashboards broker-start broker-stop broker-status broker-wipe topics clean

help:
	@echo "make run           start broker, topics, worker and simulator (SIMULATE=0: no simulator)"
	@echo "make test          unit + integration tests (starts its own broker on free ports)"
	@echo "make stop          stop whatever 'make run' left running"
	@echo "make unit | integration   one half of the suite"
	@echo "make eval          detection quality on simulated scenario sets (table + PNG)"
	@echo "make bench         speed and memory figures against a broker of its own"
	@echo "make dashboards    regenerate Grafana dashboards and Prometheus rules from code"
	@echo "make broker-start | broker-stop | broker-status | broker-wipe | topics"
	@echo "make install       virtualenv + pinned Python packages + the compiled number stage (cargo); make jars: Kafka from Maven Central"
	@echo "make system-packages   Debian packages the tests drive (prometheus, kamailio, sipp, tshark, chromium)"

$(STAMP): pyproject.toml $(NATIVE)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@command -v cargo >/dev/null || { echo "need Rust's cargo to build streams/native (https://rustup.rs: rustup, then cargo on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(STAMP)

$(JARS): services/kafka-jars/pom.xml | $(STAMP)
	@command -v java >/dev/null || { echo "need Java 17 (java on PATH)"; exit 1; }
	@command -v mvn >/dev/null || { echo "need Maven (mvn on PATH)"; exit 1; }
	$(DG) broker fetch
	@touch $@

jars: $(JARS)

run: $(STAMP) $(JARS)
	$(DG) run $(if $(filter 0,$(SIMULATE)),--no-simulate,)

stop: $(STAMP)
	$(DG) stop

# Debian packages driven for real: prometheus/promtool (rules, dashboards), kamailio and sipp
# (switch adapter, end-to-end SIP), tshark (pcap replay), chromium + chromedriver (console).
system-packages:
	sh services/system/ensure_debian_packages.sh

test: $(STAMP) $(JARS) system-packages
	$(PY) -m pytest -q $(PYTEST_ARGS)

unit: $(STAMP) system-packages
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

integration: $(STAMP) $(JARS) system-packages
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

dashboards: $(STAMP)
	$(PY) -m dashboards.build

eval: $(STAMP)
	$(DG) eval $(EVAL_ARGS)

bench: $(STAMP) $(JARS)
	$(DG) bench $(BENCH_ARGS)

broker-start: $(STAMP) $(JARS)
	$(DG) broker start

broker-stop: $(STAMP)
	$(DG) broker stop

broker-status: $(STAMP)
	$(DG) broker status

broker-wipe: $(STAMP)
	$(DG) broker wipe

topics: $(STAMP)
	$(DG) topics create

clean: broker-stop
	rm -rf $(VENV) .dialguard/run .dialguard/data
