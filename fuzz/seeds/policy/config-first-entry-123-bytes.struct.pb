
{
public_keys_envhfKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK

vendor	anthropic
Æ
policies¹2¶
³*°
J
	endpoints=2;
9*7

methodPOST
#
path/v1/messages/count_tokens

max_ttl15m

namecount-tokens
!

secret_envANTHROPIC_API_KEY

vendor	anthropic