# Every target bootstraps .venv from pyproject.toml on first use, so a fresh clone just works.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready
ISSUE ?= 1

.DEFAULT_GOAL := help
CSV ?= subscribers.sample.csv
.PHONY: lint lock help demo new welcome init build check preview send status config subscribers serve events archive links links-archive errata stop-press test test-fast golden bench bench-send clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The versions CI tested, pinned in constraints.txt; `make lock` moves them to the newest allowed.
$(READY): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,lint]'
	touch $@

demo: $(READY) ## Quick start: import the sample subscribers, send issue ISSUE (default 1) into outbox/ (no account needed)
	$(BIN)/newsletter subscribers import $(CSV)
	$(BIN)/newsletter send $(ISSUE)
	@echo "Messages are in outbox/new/ (a Maildir: open it in any mail client)."

new: $(READY) ## Start the next issue: issues/<next number>.md, dated, titled, with the last issue's sections
	$(BIN)/newsletter new

welcome: $(READY) ## Send a test copy of the welcome mail (email_templates/welcome.md): make welcome TO=you@example.org
	@test -n "$(TO)" || { echo 'usage: make welcome TO=address'; exit 2; }
	$(BIN)/newsletter welcome --to "$(TO)"

init: $(READY) ## Start a newsletter of your own in an empty folder: make init DIR=../my-letter (asks the rest)
	@test -n "$(DIR)" || { echo 'usage: make init DIR=folder'; exit 2; }
	$(BIN)/newsletter init "$(DIR)"

build: $(READY) ## Render issue ISSUE into build/ISSUE/ (email.html, email.txt, message.eml)
	$(BIN)/newsletter build $(ISSUE)

check: $(READY) ## Validate and build issue ISSUE; fail on problems (size, links, images, spam score)
	$(BIN)/newsletter check $(ISSUE)

preview: $(READY) ## Serve issue ISSUE on 127.0.0.1:8000, live-reloading on changes
	$(BIN)/newsletter preview $(ISSUE)

send: $(READY) ## Check issue ISSUE, then send it to every active subscriber (resumes an interrupted send)
	$(BIN)/newsletter send $(ISSUE) $(ARGS)

status: $(READY) ## Show the progress of issue ISSUE's campaign, also while it runs
	$(BIN)/newsletter status $(ISSUE)

config: $(READY) ## Print the effective configuration: each key, its value and where it came from (secrets masked)
	$(BIN)/newsletter config show

subscribers: $(READY) ## Import subscribers from CSV=file.csv and show the counts
	$(BIN)/newsletter subscribers import $(CSV)
	$(BIN)/newsletter subscribers count

serve: $(READY) ## Run the subscriber web service (sign-up, unsubscribe, SES webhook) on serve.host:serve.port
	$(BIN)/newsletter serve

events: $(READY) ## Apply SES bounce/complaint notifications waiting in the SQS queue (events.queue_url)
	$(BIN)/newsletter events pull

archive: $(READY) ## Write issue ISSUE into archive/ (Markdown, index, feed) and push it to archive.remote
	$(BIN)/newsletter archive $(ISSUE)

links: $(READY) ## Check issue ISSUE's links over HTTP
	$(BIN)/newsletter links $(ISSUE)

links-archive: $(READY) ## Re-check every archived issue's links; print errata suggestions
	$(BIN)/newsletter links --archive

errata: $(READY) ## Record a correction to sent issue ISSUE: make errata ISSUE=17 TEXT="..."
	@test -n "$(TEXT)" || { echo 'usage: make errata ISSUE=N TEXT="the correction"'; exit 2; }
	$(BIN)/newsletter errata add $(ISSUE) --text "$(TEXT)"

stop-press: $(READY) ## Mail a correction to sent issue ISSUE's readers now: make stop-press ISSUE=17 TEXT="..." [ARGS="--replace OLD NEW"]
	@test -n "$(TEXT)" || { echo 'usage: make stop-press ISSUE=N TEXT="the correction" [ARGS="--replace OLD NEW --yes"]'; exit 2; }
	$(BIN)/newsletter errata add $(ISSUE) --text "$(TEXT)" --stop-press $(ARGS)

test: $(READY) ## Run the whole test suite (2 workers; browser, corpus and real-server tests included)
	$(BIN)/python -m pytest

test-fast: $(READY) ## The edit loop: everything but the slow end-to-end, browser and corpus tests (~1 min)
	$(BIN)/python -m pytest -m "not slow and not browser and not corpus"

lint: $(READY) ## Formatting, lint rules, types (mypy --strict) and the import layers contract
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

lock: ## Re-resolve every dependency to the newest version pyproject.toml allows; pin them in constraints.txt
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[test,lint]'
	.lock-venv/bin/pip freeze --exclude-editable > constraints.txt
	rm -rf .lock-venv
	@echo "constraints.txt updated: run 'make test', then commit it"

golden: $(READY) ## Refresh the golden files in tests/golden/ after an intended rendering change
	$(BIN)/python -m tests.golden

BASE ?= 0b06fa9
bench: $(READY) ## Time the build (also side by side against commit BASE) and sending (quick); figures in bench/README.md
	$(BIN)/python bench/bench_build.py
	$(BIN)/python bench/compare_build.py $(BASE)
	$(BIN)/python bench/bench_send.py --quick

bench-send: $(READY) ## The full sending benchmark, 1,000,000 subscribers included (~20 min)
	$(BIN)/python bench/bench_send.py

clean: ## Remove build output and the local outbox (keeps .venv and state/)
	rm -rf build outbox
