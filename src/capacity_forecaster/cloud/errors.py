"""S3 failures as one clear message: which dataset, which ``s3://`` URI, the service's reason and what to do.

Kedro, s3fs, pandas and pyarrow each report the same S3 problem differently (``DatasetError`` wrapping
``PermissionError('Forbidden')``, ``FileNotFoundError('The specified bucket does not exist')``, pyarrow's
``OSError('... AWS Error ACCESS_DENIED ...')``, botocore's ``ClientError``, s3fs's bare
``OSError(121, 'Internal Server Error')`` for a 5xx). :func:`classify` walks the exception chain and names the
problem once; :class:`CloudDatasetError` carries it. :func:`user_error` finds, in any exception chain, the
error whose message is already a complete diagnosis (the CLI prints it without a traceback).
"""

import re
from dataclasses import dataclass, replace
from typing import Any

from kedro.io import DatasetError

from .settings import CloudConfigError

NO_SUCH_BUCKET = "NoSuchBucket"
NO_SUCH_KEY = "NoSuchKey"
ACCESS_DENIED = "AccessDenied"
WRONG_REGION = "WrongRegion"
UNREACHABLE = "Unreachable"
UNREADABLE = "Unreadable"
SERVICE_ERROR = "ServiceError"
NO_CREDENTIALS = "NoCredentials"

_HINTS = {
    NO_SUCH_BUCKET: "the bucket does not exist in this account: create it (aws s3 mb s3://{bucket} --region "
    "{region}) or set CF_BUCKET to an existing bucket",
    NO_SUCH_KEY: "no object at this key: run the pipeline that writes it first, or upload your file with "
    "`kedro cloud push <file> --dataset <name>`; `kedro cloud check` lists what is in the bucket",
    ACCESS_DENIED: "the AWS credentials in use are not allowed this call on the key: check the IAM policy "
    "(README, 'Run on AWS') and which identity is active (aws sts get-caller-identity)",
    WRONG_REGION: "the bucket lives in another region: set AWS_REGION to the bucket's region",
    UNREACHABLE: "S3 could not be reached after retries: check the network, proxy or AWS_ENDPOINT_URL "
    "(unset it to use AWS itself)",
    SERVICE_ERROR: "S3 failed on its side (a server error, not a problem with your data, permissions or "
    "configuration) and kept failing through the client's retries: retry later (run the same command "
    "again), and check https://health.aws.amazon.com if it persists",
    NO_CREDENTIALS: "no AWS credentials were found: set AWS_PROFILE (aws configure / aws sso login) or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (conf/local/credentials.example.yml)",
    UNREADABLE: "the object exists but is not valid for this dataset type (corrupt, truncated or another "
    "format): rewrite it by re-running the pipeline that produces it or re-pushing the file",
}

_PYARROW_CODES = {
    "NO_SUCH_BUCKET": NO_SUCH_BUCKET,
    "NO_SUCH_KEY": NO_SUCH_KEY,
    "ACCESS_DENIED": ACCESS_DENIED,
    "INTERNAL_FAILURE": SERVICE_ERROR,
    "SERVICE_UNAVAILABLE": SERVICE_ERROR,
    "SLOW_DOWN": SERVICE_ERROR,
    "THROTTLING": SERVICE_ERROR,
    "NETWORK_CONNECTION": UNREACHABLE,
}
_CLIENT_CODES = {
    "NoSuchBucket": NO_SUCH_BUCKET,
    "NoSuchKey": NO_SUCH_KEY,
    "404": NO_SUCH_KEY,
    "AccessDenied": ACCESS_DENIED,
    "403": ACCESS_DENIED,
    "Forbidden": ACCESS_DENIED,
    "InvalidAccessKeyId": ACCESS_DENIED,
    "SignatureDoesNotMatch": ACCESS_DENIED,
    "ExpiredToken": ACCESS_DENIED,
    "AllAccessDisabled": ACCESS_DENIED,
    "PermanentRedirect": WRONG_REGION,
    "301": WRONG_REGION,
    "AuthorizationHeaderMalformed": WRONG_REGION,
    "IllegalLocationConstraintException": WRONG_REGION,
    "InternalError": SERVICE_ERROR,
    "ServiceUnavailable": SERVICE_ERROR,
    "SlowDown": SERVICE_ERROR,
    "RequestTimeout": SERVICE_ERROR,
}


@dataclass(frozen=True)
class S3Problem:
    """What went wrong, in S3 terms.

    Attributes:
        code: One of the module constants (``NoSuchBucket``, ``AccessDenied``, ...).
        reason: The service's or library's own words (e.g. ``Access Denied``).
        action: What to do, when the caller knows better than the code's general hint (e.g. which pipeline
            writes a missing dataset).
    """

    code: str
    reason: str
    action: str = ""

    def hint(self, bucket: str = "<bucket>", region: str = "<region>") -> str:
        """What to do about it."""
        return self.action or _HINTS[self.code].format(bucket=bucket, region=region)

    def with_action(self, action: str) -> "S3Problem":
        """The same problem with a specific ``action``."""
        return replace(self, action=action)


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from or during (``__cause__``, else ``__context__``), in order."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def classify(exc: BaseException) -> S3Problem | None:  # noqa: PLR0911
    """Names the S3 problem behind ``exc`` (looking through ``__cause__``/``__context__``), or ``None``.

    ``None`` means the failure is not about S3 (for example a node's own bug), so it is left alone.
    """
    from botocore.exceptions import (  # noqa: PLC0415 - keep botocore off `import settings`
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import (  # noqa: PLC0415
        ConnectionError as BotoConnectionError,
    )

    chain = error_chain(exc)
    for err in chain:
        if isinstance(err, ClientError):
            problem = _client_problem(err)
            if problem is not None:
                return problem
        if isinstance(err, BotoConnectionError):
            return S3Problem(UNREACHABLE, str(err))
        if isinstance(err, ReadTimeoutError | HTTPClientError):
            return S3Problem(SERVICE_ERROR, f"no complete answer from S3: {err}")
        if isinstance(err, NoCredentialsError):
            return S3Problem(NO_CREDENTIALS, str(err))
    for err in chain:
        text = str(err)
        match = re.search(r"AWS Error ([A-Z_]+)", text)
        if isinstance(err, OSError) and match and match.group(1) in _PYARROW_CODES:
            return S3Problem(_PYARROW_CODES[match.group(1)], text)
        if isinstance(err, OSError) and re.search(r"HTTP status 5\d\d", text):
            return S3Problem(SERVICE_ERROR, text)
        if isinstance(err, PermissionError):
            return S3Problem(ACCESS_DENIED, text or "Forbidden")
        if isinstance(err, FileNotFoundError):
            if "bucket does not exist" in text:
                return S3Problem(NO_SUCH_BUCKET, text)
            return S3Problem(NO_SUCH_KEY, f"not found: {text}")
    return None


def _client_problem(err: Any) -> S3Problem | None:
    """A botocore ``ClientError`` as a problem: by its error code, else by a 5xx HTTP status."""
    error = err.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message") or err)
    meta = err.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or (code if code.isdigit() else 0))
    if code in _CLIENT_CODES and _CLIENT_CODES[code] != SERVICE_ERROR:
        return S3Problem(_CLIENT_CODES[code], message)
    if code in _CLIENT_CODES or status >= 500:
        attempts = int(meta.get("RetryAttempts") or 0) + 1
        named = "" if code.isdigit() else f" {code}"
        return S3Problem(
            SERVICE_ERROR,
            f"HTTP {status or '?'}{named} on {getattr(err, 'operation_name', 'the request')}: {message} "
            f"({attempts} attempt{'s' if attempts > 1 else ''})",
        )
    return None


def classify_unreadable(exc: BaseException) -> S3Problem:
    """The object was fetched but could not be parsed: the deepest error in the chain is the reason."""
    chain = error_chain(exc)
    innermost = chain[-1]
    return S3Problem(UNREADABLE, f"{type(innermost).__name__}: {innermost}")


class CloudStorageError(RuntimeError):
    """S3 cannot be used as configured (missing bucket, no permission, wrong region, unreachable)."""


def user_error(exc: BaseException) -> BaseException | None:
    """The first error in ``exc``'s chain whose message is a complete diagnosis for the user, or ``None``.

    These are the project's configuration and S3 errors (:class:`CloudConfigError`,
    :class:`CloudStorageError`, :class:`CloudDatasetError`): each names what failed, where, why and what to
    do, so a command line shows the message alone, without a traceback.
    """
    for err in error_chain(exc):
        if isinstance(err, CloudConfigError | CloudStorageError | CloudDatasetError):
            return err
    return None


class CloudDatasetError(DatasetError):
    """A catalog dataset on S3 could not be loaded or saved; the message says which, where and why.

    It is a ``DatasetError``, so code that handles Kedro's dataset errors keeps working.

    Attributes:
        dataset_name: Catalog name, e.g. ``forecasts``.
        uri: ``s3://bucket/key`` of the dataset.
        operation: ``load`` or ``save``.
        problem: The classified problem.
    """

    def __init__(self, dataset_name: str, uri: str, operation: str, problem: S3Problem, region: str = ""):
        self.dataset_name, self.uri, self.operation, self.problem = dataset_name, uri, operation, problem
        bucket = uri[len("s3://") :].split("/", 1)[0]
        verb = "load" if operation == "load" else "save"
        super().__init__(
            f"Could not {verb} dataset '{dataset_name}' {'from' if verb == 'load' else 'to'} {uri}: "
            f"{problem.code}: {problem.reason}. What to do: {problem.hint(bucket, region or '<region>')}."
        )
