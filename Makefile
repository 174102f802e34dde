# reefguide-efs: the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
LABCTL := lab/labctl

.PHONY: setup demo test test-quick lint bench lab-up lab-down lab-status

setup:
	@scripts/setup.sh

## demo: bring the lab up (a ReefGuide deployment on loopback) and stage a sample dataset into it
demo: setup
	@$(LABCTL) up
	@$(LABCTL) exec -- $(VENV)/ansible-playbook playbooks/demo.yml

## test: the whole test suite against fresh labs (what CI runs); budget 15 min on 2 cores
test: setup
	@scripts/test.sh

## test-quick: linters and every test that needs no lab (the loop after each edit); budget 90 s
test-quick: setup
	@scripts/test.sh --quick

lint: setup
	@$(VENV)/ruff check library module_utils lab tests bench scripts/reefguide-sync
	@$(VENV)/ansible-lint -q

bench: setup
	@$(VENV)/python bench/run.py
	@$(VENV)/python bench/load.py --work .bench/load

lab-up: setup
	@$(LABCTL) up
lab-down:
	@$(LABCTL) down
lab-status:
	@$(LABCTL) status
