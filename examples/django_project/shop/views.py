from django.db import transaction
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST
from shop.models import Signup
from shop.results import TaskResultDoesNotExist, describe
from shop.tasks import send_welcome


@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    """The row and its job commit together, or neither does (an exception inside the
    block rolls both back): no transaction.on_commit needed."""
    with transaction.atomic():
        row = Signup.objects.create(email=request.POST["email"])
        result = send_welcome.enqueue(row.id, row.email)
        if request.POST.get("fail"):
            raise RuntimeError("signup failed after the enqueue: both roll back")
    return JsonResponse({"signup": row.id, "task_result": result.id}, status=202)


@require_GET
def task_result(_request: HttpRequest, result_id: str) -> JsonResponse:
    try:
        return JsonResponse(describe(result_id))
    except TaskResultDoesNotExist:
        raise Http404("no such task result") from None
