"""S3 failures as one clear message: which dataset, which ``s3://`` URI, the service's reason and what to do.

Kedro, s3fs, pandas and pyarrow each report the same S3 problem differently (``DatasetError`` wrapping
``PermissionError('Forbidden')``, ``FileNotFoundError('The specified bucket does not exist')``, pyarrow's
``OSError('... AWS Error ACCESS_DENIED ...')``, botocore's ``ClientError``). :func:`classify` walks the
exception chain and names the problem once; :class:`CloudDatasetError` carries it.
"""

import re
from dataclasses import dataclass

from kedro.io import DatasetError

NO_SUCH_BUCKET = "NoSuchBucket"
NO_SUCH_KEY = "NoSuchKey"
ACCESS_DENIED = "AccessDenied"
WRONG_REGION = "WrongRegion"
UNREACHABLE = "Unreachable"
UNREADABLE = "Unreadable"

_HINTS = {
    NO_SUCH_BUCKET: "the bucket does not exist in this account: create it (aws s3 mb s3://{bucket} --region "
    "{region}) or set CF_BUCKET to an existing bucket",
    NO_SUCH_KEY: "no object at this key: run the pipeline that writes it first, or upload your file with "
    "`kedro cloud push <file> --dataset <name>`; `kedro cloud check` lists what is in the bucket",
    ACCESS_DENIED: "the AWS credentials in use are not allowed this call on the key: check the IAM policy "
    "(README, 'Run on AWS') and which identity is active (aws sts get-caller-identity)",
    WRONG_REGION: "the bucket lives in another region: set AWS_REGION to the bucket's region",
    UNREACHABLE: "S3 could not be reached after retries: check the network, proxy or AWS_ENDPOINT_URL",
    UNREADABLE: "the object exists but is not valid for this dataset type (corrupt, truncated or another "
    "format): rewrite it by re-running the pipeline that produces it or re-pushing the file",
}

_PYARROW_CODES = {
    "NO_SUCH_BUCKET": NO_SUCH_BUCKET,
    "NO_SUCH_KEY": NO_SUCH_KEY,
    "ACCESS_DENIED": ACCESS_DENIED,
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
}


@dataclass(frozen=True)
class S3Problem:
    """What went wrong, in S3 terms.

    Attributes:
        code: One of the module constants (``NoSuchBucket``, ``AccessDenied``, ...).
        reason: The service's or library's own words (e.g. ``Access Denied``).
    """

    code: str
    reason: str

    def hint(self, bucket: str = "<bucket>", region: str = "<region>") -> str:
        """What to do about it."""
        return _HINTS[self.code].format(bucket=bucket, region=region)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def classify(exc: BaseException) -> S3Problem | None:  # noqa: PLR0911
    """Names the S3 problem behind ``exc`` (looking through ``__cause__``/``__context__``), or ``None``.

    ``None`` means the failure is not about S3 (for example a node's own bug), so it is left alone.
    """
    from botocore.exceptions import (  # noqa: PLC0415 - keep the import cost off `import settings`
        ClientError,
    )
    from botocore.exceptions import (  # noqa: PLC0415 - keep botocore off `import settings`
        ConnectionError as BotoConnectionError,
    )

    chain = _chain(exc)
    for err in chain:
        if isinstance(err, ClientError):
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            reason = str(error.get("Message") or err)
            if code in _CLIENT_CODES:
                return S3Problem(_CLIENT_CODES[code], reason)
        if isinstance(err, BotoConnectionError):
            return S3Problem(UNREACHABLE, str(err))
    for err in chain:
        text = str(err)
        match = re.search(r"AWS Error ([A-Z_]+)", text)
        if isinstance(err, OSError) and match and match.group(1) in _PYARROW_CODES:
            return S3Problem(_PYARROW_CODES[match.group(1)], text)
        if isinstance(err, PermissionError):
            return S3Problem(ACCESS_DENIED, text or "Forbidden")
        if isinstance(err, FileNotFoundError):
            if "bucket does not exist" in text:
                return S3Problem(NO_SUCH_BUCKET, text)
            return S3Problem(NO_SUCH_KEY, f"not found: {text}")
    return None


def classify_unreadable(exc: BaseException) -> S3Problem:
    """The object was fetched but could not be parsed: the deepest error in the chain is the reason."""
    chain = _chain(exc)
    innermost = chain[-1]
    return S3Problem(UNREADABLE, f"{type(innermost).__name__}: {innermost}")


class CloudStorageError(RuntimeError):
    """S3 cannot be used as configured (missing bucket, no permission, wrong region, unreachable)."""


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
