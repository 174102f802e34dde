# The AWS options every controller-side reefguide-efs module takes
# (module_utils/reefguide/aws.py AWS_COMMON_ARGS), documented once.


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  region:
    description: AWS region. Default from the environment or the profile.
    type: str
    aliases: [aws_region]
  profile:
    description: AWS profile to use. Default the environment's credentials.
    type: str
    aliases: [aws_profile]
  endpoint_url:
    description:
      - Endpoint URL for the AWS APIs (the lab). Default from C(AWS_ENDPOINT_URL_<SERVICE>), then
        C(AWS_ENDPOINT_URL); none means AWS itself.
    type: str
    aliases: [aws_endpoint_url]
  max_attempts:
    description: Attempts per AWS call, with exponential back-off on throttling and server errors.
    type: int
    default: 10
requirements: [boto3]
"""
